"""``raretarget serve``: the review web app, end to end in headless chromium (load, query, click a verdict:
the verdict is in the store and the ranking changes), plus its guards (token, input errors, no external
resources) through Flask's test client."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest



@pytest.fixture(scope="module")
def app_store(cohort_store):
    pytest.importorskip("flask")
    tmp, eng, truth = cohort_store(12, 3, kinds=("fhir", "vcf"))
    dis = truth["diseases"][0]
    return tmp, eng, dis


def test_app_guards_and_offline_pages(app_store):
    from raretarget.serve import create_app

    tmp, eng, dis = app_store
    client = create_app(eng, top=5).test_client()
    r = client.get("/")
    assert r.status_code == 200 and b'id="query-form"' in r.data
    r = client.get("/rank?hpo=HP:12,Jane+Roe")
    assert r.status_code == 400 and b"not an HPO id" in r.data and b"Jane" not in r.data.split(b"<form")[0]
    r = client.get("/rank?" + "hpo=" + ",".join(dis["hpo"][:4]))
    page = r.data.decode()
    assert r.status_code == 200 and page.count('<form class="verdict"') == 5
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert not re.search(r"""(src|href|action)\s*=\s*["']?(https?:)?//""", page) and "<script" not in page
    assert "NaN" not in page and "relevance" in page and "priority" in page
    hid = re.search(r'id="hypothesis-id">(H[0-9a-f]{12})<', page).group(1)
    gene = re.search(r'<form class="verdict" method="post" action="/review" data-gene="([^"]+)"', page).group(1)
    # a POST without this process's token (another web page posting through the browser) is refused
    r = client.post("/review", data={"hypothesis_id": hid, "gene": gene, "verdict": "rejected", "token": "x"})
    assert r.status_code == 403 and eng.reviews(hid).num_rows == 0
    token = re.search(r'name="token" value="([^"]+)"', page).group(1)
    r = client.post("/review", data={"hypothesis_id": hid, "gene": gene, "verdict": "nope", "token": token})
    assert r.status_code == 400 and b"verdict: must be one of" in r.data


def _chromium() -> str | None:
    for c in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or ""):
        if c and Path(c).exists():
            return c
    return None


class _CDP:
    """The few Chrome DevTools Protocol calls the test needs, over aiohttp's websocket client."""

    def __init__(self, ws):
        self.ws, self.n = ws, 0

    async def call(self, method, **params):
        self.n += 1
        await self.ws.send_json({"id": self.n, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=60)
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg.get("result", {})

    async def js(self, expr):
        r = await self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        return r.get("result", {}).get("value")

    async def wait(self, expr, timeout=90):
        t0 = time.time()
        while time.time() - t0 < timeout:
            try:
                if await self.js(expr):
                    return True
            except RuntimeError:          # navigation in progress: the context was replaced
                pass
            await asyncio.sleep(0.25)
        raise AssertionError(f"timed out waiting for {expr}")


def test_review_app_end_to_end_in_headless_browser(app_store, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium not installed (/usr/bin/chromium absent): browser end-to-end test skipped")
    aiohttp = pytest.importorskip("aiohttp", reason="aiohttp (websocket client for the DevTools protocol) absent")
    from raretarget.serve import make_server

    tmp, eng, dis = app_store
    srv = make_server(eng, "127.0.0.1", 0, top=6)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    base = f"http://127.0.0.1:{srv.server_port}"
    profile = tmp_path / "profile"
    proc = subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                             "--disable-component-update", "--disable-sync", "--no-first-run",
                             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(200):
            if port_file.exists() and port_file.read_text().strip():
                break
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
        terms = dis["hpo"][:5]

        async def drive():
            async with aiohttp.ClientSession() as s:
                async with s.ws_connect(ws_url, max_msg_size=0) as ws:
                    b = _CDP(ws)
                    await b.call("Page.enable")
                    await b.call("Page.navigate", url=base + "/")                       # load
                    await b.wait("document.querySelector('#query-form') !== null")
                    await b.js(f"document.querySelector('#hpo').value = {json.dumps(', '.join(terms))}")
                    await b.js("document.querySelector('#go').click()")                 # query
                    await b.wait("document.querySelector('table.ranked') !== null")
                    before = await b.js("[...document.querySelectorAll('table.ranked tbody tr')]"
                                        ".map(r => r.dataset.gene)")
                    hid = await b.js("document.querySelector('#hypothesis-id').textContent")
                    gene = before[0]
                    await b.js(f"""(() => {{ const f = document.querySelector('form.verdict[data-gene="{gene}"]');
                                 f.querySelector('input[name=note]').value = 'not consistent, seen 2024-05-06';
                                 f.querySelector('button[value=rejected]').click(); }})()""")   # click a verdict
                    await b.wait("document.querySelector('#saved') !== null")
                    after = await b.js("[...document.querySelectorAll('table.ranked tbody tr')]"
                                       ".map(r => [r.dataset.gene, r.cells[8].textContent.trim()])")
                    return before, hid, after

        before, hid, after = asyncio.run(drive())
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        srv.shutdown()
        th.join(timeout=20)
    assert len(before) == 6
    gene = before[0]
    # the verdict is in the store, note de-identified
    v = eng.reviews(hid).to_pylist()
    assert len(v) == 1 and v[0]["gene"] == gene and v[0]["verdict"] == "rejected"
    assert v[0]["note"] == "not consistent, seen [DATE]"
    # and the ranking changed: the rejected gene is last and marked, the others moved up
    assert after[-1] == [gene, "rejected"] and after[0][0] == before[1]
    assert [g for g, _ in after[:5]] == before[1:6]
    assert any(e["action"] == "review" for e in eng.audit_log())
