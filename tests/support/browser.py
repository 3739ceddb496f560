"""A real headless browser for the UI and report tests: Debian's chromium (installed by
scripts/setup_system_packages.sh) driven by Playwright for Python through `executable_path`, so no
browser download (`playwright install`) is needed. Every console error and uncaught page
error is collected; `browser_page` fails the test if there were any."""
import contextlib
import shutil
import threading
from typing import Iterator, List, Optional, Tuple

CHROMIUM_MISSING = ("chromium is not installed: run `bash scripts/setup_system_packages.sh` (part of `make setup`) "
                    "- the browser tests need Debian's chromium")


def chromium_path() -> str:
    """The chromium executable on PATH; fails the test (never skips) when there is none."""
    import pytest
    path = shutil.which("chromium")
    if not path:
        pytest.fail(CHROMIUM_MISSING)
    return path


@contextlib.contextmanager
def browser_page(width: int = 1200, height: int = 1000) -> Iterator[Tuple[object, List[str]]]:
    """(Playwright page, console errors so far); asserts on exit that no console error or
    page error happened."""
    from playwright.sync_api import sync_playwright
    errors: List[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text} ({page.url})")
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e} ({page.url})"))
            yield page, errors
        finally:
            browser.close()
    assert not errors, errors


@contextlib.contextmanager
def ui_server(home: str, serving_url: Optional[str] = None) -> Iterator[str]:
    """`conveyor ui` for HOME on 127.0.0.1 and a free port, in a thread; yields its base URL
    and stops it on exit."""
    from werkzeug.serving import make_server

    from conveyor.ui import create_app
    server = make_server("127.0.0.1", 0, create_app(home, serving_url), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
