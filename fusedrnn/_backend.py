"""The keyword-only ``backend=`` every fusedrnn module takes (``_checks.BACKENDS``)."""

from fusedrnn._checks import check_backend


class WithBackend:
    """Mixed in before torch's module class: checks and keeps ``backend``, and names it in the
    repr unless it is the default, so that an ``"auto"`` module's repr is torch's."""

    def _set_backend(self, backend):
        check_backend(backend)
        self.backend = backend

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.backend == "auto" else f"{s}, backend={self.backend!r}"
