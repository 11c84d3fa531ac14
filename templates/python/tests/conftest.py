import sys
from pathlib import Path

# Make `server.py`, one folder up, importable as `server`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
