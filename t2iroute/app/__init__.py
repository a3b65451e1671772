"""The Streamlit app (``t2iroute app``): route prompts, generate baseline vs routed side by side,
and plot benchmark folders. The page scripts are thin; what they compute lives in ``logic``."""

from pathlib import Path

APP_DIR = Path(__file__).parent
APP_FILE = APP_DIR / "streamlit_app.py"
ROUTE_PAGE = APP_DIR / "route_page.py"
BENCH_PAGE = APP_DIR / "bench_page.py"
