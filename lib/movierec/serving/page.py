"""The demo page (static/index.html) and a Content-Security-Policy that pins its inline code."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

PAGE = Path(__file__).parent / "static" / "index.html"
_INLINE = {"script": re.compile(r"<script>(.*?)</script>", re.S),
           "style": re.compile(r"<style>(.*?)</style>", re.S)}


def _hashes(html: str, tag: str) -> str:
    digests = [base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
               for body in _INLINE[tag].findall(html)]
    return " ".join(f"'sha256-{d}'" for d in digests) or "'none'"


def load_page(path: Path = PAGE) -> tuple[str, str]:
    """The page's HTML and its Content-Security-Policy.

    The policy allows only the page's own inline script and style, and requests to this
    origin (no CDN, no third-party code).
    """
    html = path.read_text(encoding="utf-8")
    csp = (f"default-src 'none'; script-src {_hashes(html, 'script')}; "
           f"style-src {_hashes(html, 'style')}; connect-src 'self'; img-src 'self'; "
           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html, csp
