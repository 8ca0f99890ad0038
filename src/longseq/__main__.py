"""``python -m longseq``: the ``longseq`` command line (what ``torchrun -m longseq``
starts in each process)."""

from longseq.cli import app

app(prog_name="longseq")
