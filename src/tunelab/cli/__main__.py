"""`python -m tunelab.cli` (and `accelerate launch -m tunelab.cli train ...`)."""

from tunelab.cli import main

main()
