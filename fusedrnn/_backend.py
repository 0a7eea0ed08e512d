"""The keyword-only ``backend=`` every fusedrnn module takes (``functional.BACKENDS``)."""

from fusedrnn.functional import BACKENDS


class WithBackend:
    """Mixed in before torch's module class: checks and keeps ``backend``, and names it in the
    repr unless it is the default, so that an ``"auto"`` module's repr is torch's."""

    def _set_backend(self, backend):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.backend == "auto" else f"{s}, backend={self.backend!r}"
