"""``raretarget serve STORE``: a local review web app (Flask) for a clinical geneticist.

Enter a hypothesis (HPO ids and/or free text, optionally the index case as a store patient), see the ranked
genes with their evidence (the hypothesis page's sections: matched terms, variants, cohort, druggability,
score decomposition), and give each gene a verdict (confirm / reject / unsure + note). Verdicts go through
:meth:`Engine.review` (the same append-only, de-identified store as ``raretarget review``); the page then
shows the re-ranked list (rejected genes last, verdicts marked).

Bound to 127.0.0.1 by default (this machine only); no external resources (inline CSS/SVG, no scripts);
POSTs carry a per-process random token so another web page cannot post verdicts through the browser;
requests are served one at a time (the Engine is not thread-safe); every ranking and verdict is audited.
"""

from __future__ import annotations

import html
import secrets
from urllib.parse import urlencode

__all__ = ["create_app", "serve"]


def _esc(v) -> str:
    return html.escape("" if v is None else str(v), quote=True)


APP_CSS = """
form.q{background:#f6f8fb;border:1px solid #dde3ea;padding:.8em;margin:.5em 0 1em}form.q label{display:block;
margin:.3em 0 .1em;font-weight:600}form.q input[type=text]{width:100%;max-width:900px;padding:4px}
form.verdict{margin:.4em 0 .8em}form.verdict input[type=text]{width:360px}form.verdict button{margin-right:4px}
.err{background:#fde8e8;border:1px solid #e0a0a0;padding:.5em}.ok{background:#e6f4ea;border:1px solid #9cc9a6;padding:.5em}
"""


def create_app(engine, *, top: int = 20):
    """The Flask app over one opened :class:`raretarget.Engine`."""
    from flask import Flask, redirect, request

    from raretarget.audit import current_user
    from .report import CSS, _label_fn, _rnum, evidence_summary, gene_evidence_html
    from raretarget.review import VERDICTS, ReviewError, table_hypothesis_id

    app = Flask("raretarget.serve")
    token = secrets.token_urlsafe(24)
    label = _label_fn(engine)

    def page(title: str, body: str, status: int = 200):
        doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
               f"<title>{_esc(title)}</title><style>{CSS}{APP_CSS}</style></head><body>"
               f"<nav><a href=\"/\">New hypothesis</a></nav><h1>{_esc(title)}</h1>{body}"
               "<p class=\"muted\">raretarget review app: pseudonymous store data only; verdict notes are "
               "de-identified before they are stored.</p></body></html>\n")
        return doc, status, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
                             "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                                        "img-src data:; form-action 'self'"}

    def query_args(src) -> dict:
        return {k: (src.get(k) or "").strip() for k in ("hpo", "exclude", "text", "patient")}

    def form(q: dict, msg: str = "") -> str:
        return (msg + '<form class="q" id="query-form" method="get" action="/rank">'
                '<label for="hpo">HPO terms (observed)</label>'
                f'<input type="text" id="hpo" name="hpo" value="{_esc(q.get("hpo"))}" '
                'placeholder="HP:0001250, HP:0000256">'
                '<label for="exclude">HPO terms explicitly absent</label>'
                f'<input type="text" id="exclude" name="exclude" value="{_esc(q.get("exclude"))}">'
                '<label for="text">or/and a free-text description</label>'
                f'<input type="text" id="text" name="text" value="{_esc(q.get("text"))}">'
                '<label for="patient">index case (pseudonymous store patient id, optional)</label>'
                f'<input type="text" id="patient" name="patient" value="{_esc(q.get("patient"))}">'
                '<p><button type="submit" id="go">Rank candidate genes</button></p></form>')

    def terms(s: str, field: str) -> list[str]:
        import re

        out = []
        for i, t in enumerate(x for x in re.split(r"[\s,;]+", s or "") if x):
            t = t.upper().replace("_", ":")
            if not re.fullmatch(r"HP:\d{7}", t):
                raise ValueError(f"{field}: term {i + 1} is not an HPO id (expected HP:nnnnnnn)")
            out.append(t)
        return out

    @app.get("/")
    def index():
        return page("Rank candidate genes for a hypothesis", form({}))

    @app.get("/rank")
    def rank():
        q = query_args(request.args)
        try:
            obs, exc = terms(q["hpo"], "HPO terms"), terms(q["exclude"], "absent HPO terms")
            if not obs and not q["text"]:
                raise ValueError("give HPO terms or a free-text description")
            ranked = engine.rank_targets(q["text"] or None, phenotypes=obs or None, excluded=exc,
                                         patient=q["patient"] or None, k=top)
        except (ValueError, RuntimeError) as e:      # messages name the field, never echo the value
            return page("Rank candidate genes for a hypothesis", form(q, f'<p class="err">{_esc(e)}</p>'), 400)
        hid = table_hypothesis_id(ranked)
        back = "/rank?" + urlencode(q)
        rows = ranked.to_pylist()
        head = ["#", "gene", "relevance", "priority", "best disease", "matched terms", "variants", "druggability",
                "verdict"]
        trs = []
        for r in rows:
            es = evidence_summary(r.get("evidence"))
            v = r.get("verdict")
            trs.append(f'<tr data-gene="{_esc(r["gene"])}"><td class="num">{_esc(r["rank"])}</td>'
                       f'<td><a href="#gene-{_esc(r["gene"])}">{_esc(r["gene"])}</a></td>'
                       f'<td class="num">{_esc(_rnum(r.get("relevance")))}</td>'
                       f'<td class="num">{_esc(_rnum(r.get("priority")))}</td><td>{_esc(es["disease"])}</td>'
                       f'<td>{_esc(es["terms"])}</td><td>{_esc(es["variants"])}</td><td>{_esc(es["drug"])}</td>'
                       + (f'<td><span class="verdict v-{_esc(v)}">{_esc(v)}</span></td>' if v else "<td></td>")
                       + "</tr>")
        parts = [form(q), f'<p>Hypothesis <code id="hypothesis-id">{_esc(hid)}</code> — relevance: how well the '
                 "gene explains the phenotypes (sums to 1); priority: the order (relevance with tractability).</p>",
                 '<table class="ranked"><thead><tr>' + "".join(f"<th>{_esc(h)}</th>" for h in head)
                 + "</tr></thead><tbody>" + "".join(trs) + "</tbody></table>"]
        if request.args.get("saved"):
            parts.insert(0, f'<p class="ok" id="saved">Verdict recorded for {_esc(request.args.get("saved"))}.</p>')
        for r in rows:
            sec = gene_evidence_html(r, label=label)
            buttons = "".join(f'<button type="submit" name="verdict" value="{v}">{v}</button>' for v in VERDICTS)
            vform = (f'<form class="verdict" method="post" action="/review" data-gene="{_esc(r["gene"])}">'
                     f'<input type="hidden" name="token" value="{token}">'
                     f'<input type="hidden" name="hypothesis_id" value="{_esc(hid)}">'
                     f'<input type="hidden" name="gene" value="{_esc(r["gene"])}">'
                     f'<input type="hidden" name="back" value="{_esc(back)}">'
                     f'<input type="text" name="note" placeholder="note (de-identified before storage)"> '
                     f'<input type="text" name="reviewer" value="{_esc(current_user())}" size="12"> '
                     f"{buttons}</form>")
            parts.append(sec.replace("</section>", vform + "</section>", 1))
        return page("Ranked candidate genes", "".join(parts))

    @app.post("/review")
    def post_review():
        f = request.form
        if not secrets.compare_digest(f.get("token", ""), token):
            return page("Verdict not recorded", '<p class="err">stale or foreign form: reload the page</p>', 403)
        back = f.get("back", "/")
        if not back.startswith("/rank?"):            # only back to this app's own ranking page
            back = "/"
        try:
            row = engine.review(f.get("hypothesis_id", ""), f.get("gene", ""), f.get("verdict", ""),
                                note=f.get("note", ""), reviewer=f.get("reviewer") or None)
        except ReviewError as e:
            return page("Verdict not recorded", f'<p class="err">{_esc(e)}</p>', 400)
        return redirect(f"{back}&saved={row['gene']}+{row['verdict']}#gene-{row['gene']}", code=303)

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    return app


def make_server(engine, host: str = "127.0.0.1", port: int = 8765, top: int = 20):
    """A werkzeug server (single-threaded: the Engine is not thread-safe); ``port=0`` picks a free port."""
    from werkzeug.serving import make_server as mk

    return mk(host, port, create_app(engine, top=top), threaded=False)


def serve(args) -> int:
    """``raretarget serve`` (argparse namespace: store, links, host, port, top)."""
    from raretarget import Engine
    from raretarget.audit import record

    eng = Engine.open(args.store, links=args.links)
    srv = make_server(eng, args.host, args.port, getattr(args, "top", 20))
    record(eng, "serve", host=args.host, port=srv.server_port)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can read the rankings "
              "and record verdicts")
    print(f"raretarget review app on http://{args.host}:{srv.server_port}/ (Ctrl-C to stop)")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0
