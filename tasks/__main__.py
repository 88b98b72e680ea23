"""``python -m tasks``: what ./inv runs (tasks/_program.py)."""

from tasks._program import main

main()
