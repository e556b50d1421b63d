import sys
from pathlib import Path

# test helpers (layouts.py) are importable from every test module
sys.path.insert(0, str(Path(__file__).parent))
