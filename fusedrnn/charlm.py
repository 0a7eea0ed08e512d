"""``python -m fusedrnn charlm``: a character-level language model on ``fusedrnn.LSTM``.

Embedding -> ``fusedrnn.LSTM`` -> linear, trained with Adam on next-character prediction.
The default text is Python's own documentation, the ``help()`` topics shipped in the
standard library (``pydoc_data.topics``), so it needs no download; ``--text FILE`` takes any
UTF-8 file. On CPU the LSTM runs the PyTorch reference path, on CUDA the Triton kernels.

The checkpoint is a plain ``torch.save`` dict (loadable with ``weights_only=True``) whose
``"model"`` entry uses ``torch.nn.LSTM``'s parameter names, so it loads into the same model
built with ``torch.nn.LSTM``::

    ckpt = torch.load("charlm_out/charlm.pt", weights_only=True)
    model = CharLM(**ckpt["config"], lstm_class=torch.nn.LSTM)
    model.load_state_dict(ckpt["model"])

``--resume`` continues from a checkpoint: weights, optimizer, step, loss history and the
batch sampler's random state, so a resumed run draws the batches an uninterrupted run would.
"""

import math
import os
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

from fusedrnn._usage import UsageError

CHECKPOINT_FORMAT = "fusedrnn.charlm/1"
# Keys of the checkpoint's "config": everything needed to rebuild the model.
MODEL_CONFIG_KEYS = ("vocab_size", "embed_size", "hidden_size", "num_layers")


def add_arguments(parser):
    parser.add_argument("--text", help="a UTF-8 text file (default: Python's own help() topics)")
    parser.add_argument("--steps", type=int, default=300, help="total optimizer steps (resumed runs included)")
    parser.add_argument("--batch", "-B", type=int, default=32)
    parser.add_argument("--seq-len", "-T", type=int, default=64)
    parser.add_argument("--embed-size", type=int, default=64)
    parser.add_argument("--hidden-size", "-H", type=int, default=256)
    parser.add_argument("--num-layers", "-L", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--val-every", type=int, default=50, help="validation loss every N steps (and at the end)")
    parser.add_argument("--val-batches", type=int, default=8)
    parser.add_argument("--sample-len", type=int, default=300, help="characters sampled at the end (0: none)")
    parser.add_argument(
        "--prompt", help="the text sampling starts from (default: 'The ', or the text's first character)"
    )
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--out", default="charlm_out", help="folder for charlm.pt and loss.png")
    parser.add_argument("--resume", metavar="CHECKPOINT", help="continue from this checkpoint")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", choices=["auto", "triton", "reference"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (a line per validation)")


class CharLM(nn.Module):
    """Embedding -> LSTM -> linear. ``lstm_class`` is ``fusedrnn.LSTM`` or ``torch.nn.LSTM``:
    both take the same arguments and state_dict."""

    def __init__(self, vocab_size, embed_size, hidden_size, num_layers=1, *, lstm_class=None, **lstm_kwargs):
        super().__init__()
        if lstm_class is None:
            import fusedrnn

            lstm_class = fusedrnn.LSTM
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.lstm = lstm_class(embed_size, hidden_size, num_layers=num_layers, batch_first=True, **lstm_kwargs)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens, hx=None):
        """tokens (B, T) -> logits (B, T, vocab), (h_n, c_n)."""
        output, hx = self.lstm(self.embedding(tokens), hx)
        return self.head(output), hx


def default_text():
    """Python's help() topics: English documentation on every CPython install."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a stripped-down Python: fall back to the standard library's sources
        import sysconfig

        stdlib = sysconfig.get_paths()["stdlib"]
        names = sorted(n for n in os.listdir(stdlib) if n.endswith(".py"))
        parts = []
        for name in names:
            with open(os.path.join(stdlib, name), encoding="utf-8", errors="replace") as f:
                parts.append(f.read())
        return "\n".join(parts)
    return "\n\n".join(topics[key] for key in sorted(topics))


class Corpus:
    """Characters <-> ids, and a 90/10 train/validation split of the encoded text."""

    def __init__(self, text, vocab=None):
        self.vocab = vocab if vocab is not None else "".join(sorted(set(text)))
        self.index = {ch: i for i, ch in enumerate(self.vocab)}
        unknown = set(text) - set(self.index)
        if unknown:
            raise ValueError(
                f"the text has {len(unknown)} characters that the checkpoint's vocabulary lacks, "
                f"e.g. {sorted(unknown)[:5]!r}: resume on the text it was trained on"
            )
        data = torch.tensor([self.index[ch] for ch in text], dtype=torch.long)
        split = int(0.9 * len(data))
        self.train, self.val = data[:split], data[split:]

    def encode(self, text):
        unknown = set(text) - self.index.keys()
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {sorted(unknown)[:5]!r}")
        return [self.index[ch] for ch in text]

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)


def windows(data, starts, seq_len):
    """Inputs (B, T) and next-character targets (B, T) at the given start offsets."""
    offsets = starts[:, None] + torch.arange(seq_len + 1)
    chunk = data[offsets]
    return chunk[:, :-1], chunk[:, 1:]


def random_batch(data, batch, seq_len, generator):
    starts = torch.randint(len(data) - seq_len - 1, (batch,), generator=generator)
    return windows(data, starts, seq_len)


@torch.no_grad()
def validation_loss(model, data, batch, seq_len, num_batches, device):
    """Mean loss over fixed, evenly spaced windows of the validation text (the same every
    call, so the numbers are comparable across a run)."""
    model.eval()
    count = batch * num_batches
    starts = torch.linspace(0, len(data) - seq_len - 2, count).long()
    total = 0.0
    for chunk in starts.split(batch):
        x, y = windows(data, chunk, seq_len)
        logits, _ = model(x.to(device))
        total += F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
    model.train()
    return total / (count * seq_len)


@torch.no_grad()
def sample(model, corpus, length, *, prompt="\n", temperature=0.8, generator=None, device="cpu"):
    """Feed ``prompt``, then draw ``length`` characters one at a time, carrying (h, c)."""
    model.eval()
    ids = torch.tensor([corpus.encode(prompt)], device=device)
    logits, hx = model(ids)
    drawn = []
    for _ in range(length):
        probs = torch.softmax(logits[0, -1].float() / temperature, dim=-1).cpu()
        next_id = torch.multinomial(probs, 1, generator=generator).item()
        drawn.append(next_id)
        logits, hx = model(torch.tensor([[next_id]], device=device), hx)
    model.train()
    return corpus.decode(drawn)


def save_checkpoint(path, *, model, optimizer, config, vocab, step, history, generator):
    tmp = path + ".tmp"
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "config": config,
            "vocab": vocab,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "history": history,
            "sampler_state": generator.get_state(),
        },
        tmp,
    )
    os.replace(tmp, path)  # a run killed mid-save keeps its previous checkpoint


def load_checkpoint(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a fusedrnn charlm checkpoint (format {checkpoint.get('format')!r})")
    return checkpoint


def plot_losses(history, path):
    """Training loss per step (and its running mean) and validation loss, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps, losses = history["train_step"], history["train_loss"]
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (per step)")
    window = max(1, len(losses) // 20)
    if len(losses) >= window > 1:
        kernel = torch.ones(window) / window
        smooth = F.conv1d(torch.tensor(losses)[None, None], kernel[None, None]).flatten().tolist()
        ax.plot(steps[window - 1 :], smooth, color="tab:blue", label=f"train (mean of {window})")
    if history["val_step"]:
        ax.plot(history["val_step"], history["val_loss"], "o-", color="tab:orange", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per character)")
    ax.set_title("fusedrnn charlm")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(args):
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if args.text:
        try:
            with open(args.text, encoding="utf-8") as f:
                text = f.read()
        except OSError as error:
            raise UsageError(f"--text: cannot read {args.text}: {error.strerror}") from None
        except UnicodeDecodeError as error:
            raise UsageError(f"--text: {args.text} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    else:
        text = default_text()

    if args.resume and not os.path.isfile(args.resume):
        raise UsageError(f"--resume: no checkpoint file {args.resume}")
    checkpoint = load_checkpoint(args.resume) if args.resume else None
    corpus = Corpus(text, vocab=checkpoint["vocab"] if checkpoint else None)
    if len(corpus.val) < args.seq_len + 2 or len(corpus.train) < args.seq_len + 2:
        raise UsageError(f"the text is too short for --seq-len {args.seq_len}: {len(text)} characters")
    if args.prompt is None:
        args.prompt = "The " if set("The ") <= set(corpus.vocab) else text[0]
    if args.sample_len > 0:  # fail now, not after training
        if not args.prompt:
            raise UsageError("--prompt must not be empty")
        try:
            corpus.encode(args.prompt)
        except ValueError as error:
            raise UsageError(f"--prompt: {error}") from None

    if checkpoint:
        config = checkpoint["config"]  # the checkpoint's model, whatever the size flags say
    else:
        config = {
            "vocab_size": len(corpus.vocab),
            "embed_size": args.embed_size,
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
        }
    model = CharLM(**config, backend=args.backend).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    history = {"train_step": [], "train_loss": [], "val_step": [], "val_loss": []}
    step = 0
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        generator.set_state(checkpoint["sampler_state"])
        history, step = checkpoint["history"], checkpoint["step"]

    os.makedirs(args.out, exist_ok=True)
    checkpoint_path = os.path.join(args.out, "charlm.pt")
    plot_path = os.path.join(args.out, "loss.png")
    print(
        f"charlm: {len(text):,} characters ({'--text ' + args.text if args.text else 'Python help() topics'}), "
        f"vocabulary {len(corpus.vocab)}; LSTM {config['embed_size']}->{config['hidden_size']} x "
        f"{config['num_layers']} on {device} ({_path_name(model.lstm, device)}); "
        f"steps {step}->{args.steps}, batch {args.batch}x{args.seq_len}"
    )
    print(f"  loss of a uniform guess: {math.log(len(corpus.vocab)):.3f}")
    if step == 0:
        val = validation_loss(model, corpus.val, args.batch, args.seq_len, args.val_batches, device)
        history["val_step"].append(0)
        history["val_loss"].append(val)
        print(f"  step 0: validation loss {val:.3f}")

    from tqdm import tqdm

    progress = tqdm(
        total=args.steps, initial=step, unit="step", disable=args.no_progress, file=sys.stderr, dynamic_ncols=True
    )
    tokens_per_step = args.batch * args.seq_len
    started, started_step = time.perf_counter(), step
    while step < args.steps:
        x, y = random_batch(corpus.train, args.batch, args.seq_len, generator)
        logits, _ = model(x.to(device))
        loss = F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        history["train_step"].append(step)
        history["train_loss"].append(loss.item())
        rate = (step - started_step) * tokens_per_step / (time.perf_counter() - started)
        progress.set_postfix_str(f"loss {loss.item():.3f}, {rate:,.0f} tok/s", refresh=False)
        progress.update(1)
        if step % args.val_every == 0 or step == args.steps:
            val = validation_loss(model, corpus.val, args.batch, args.seq_len, args.val_batches, device)
            history["val_step"].append(step)
            history["val_loss"].append(val)
            progress.write(f"  step {step}: train loss {loss.item():.3f}, validation loss {val:.3f}, {rate:,.0f} tok/s")
            save_checkpoint(
                checkpoint_path,
                model=model,
                optimizer=optimizer,
                config=config,
                vocab=corpus.vocab,
                step=step,
                history=history,
                generator=generator,
            )
    progress.close()

    if history["val_loss"]:
        print(f"validation loss {history['val_loss'][0]:.3f} -> {history['val_loss'][-1]:.3f}")
    if args.sample_len > 0:
        drawn = sample(
            model,
            corpus,
            args.sample_len,
            prompt=args.prompt,
            temperature=args.temperature,
            generator=torch.Generator().manual_seed(args.seed),
            device=device,
        )
        print(f"sample (temperature {args.temperature}):\n{args.prompt}{drawn}\n")
    if history["train_step"]:
        plot_losses(history, plot_path)
        print(f"loss curve: {plot_path}")
    print(f"checkpoint: {checkpoint_path} (loads into torch.nn.LSTM: see python -m fusedrnn charlm --help)")
    return 0


def _path_name(lstm, device):
    backend = getattr(lstm, "backend", "auto")
    if backend == "auto":
        return "Triton kernels" if device.type == "cuda" else "PyTorch reference"
    return {"triton": "Triton kernels", "reference": "PyTorch reference"}[backend]
