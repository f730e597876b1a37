#!/usr/bin/env python3
"""A hawkBit DDI server simulator for rota's tests (Python standard library only).

Written from the published Direct Device Integration API (v1): the controller base
resource with config.polling.sleep and _links (deploymentBase, cancelAction,
configData), deploymentBase with chunks/artifacts and download/update handling plus
maintenanceWindow, the deployment and cancel feedback channels with hawkBit's status
mapping, PUT configData, and artifact downloads with single-range support and a
quoted-SHA-1 ETag. It serves one controller of one tenant on 127.0.0.1.

Tests drive it through /_sim/... (JSON):
  POST /_sim/actions           {"file", "version", "filename"?, "name"?, "download"?,
                                "update"?, "window"?}  -> {"id"}
  POST /_sim/actions/<id>      {"cancel": true} | {"window": ...} | {"update": ...}
  POST /_sim/config            {"sleep"?, "throttle"?, "request_config"?,
                                "fail_feedback"?, "fail_downloads"?}
  GET  /_sim/state             actions, config data, request counts, artifact bytes sent
The first line on stdout is "PORT <n>".
"""

import argparse
import hashlib
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXECUTIONS = {"closed", "proceeding", "canceled", "scheduled", "rejected", "resumed",
              "downloaded", "download"}
FINISHED = {"success", "failure", "none"}
HANDLING = {"skip", "attempt", "forced"}
MAX_BODY = 1 << 20
MAX_LOG = 10000


class Sim:
    def __init__(self, tenant, controller, auth):
        self.lock = threading.Lock()
        self.tenant = tenant
        self.controller = controller
        self.auth = auth  # expected Authorization header, or None
        self.sleep = "00:00:01"
        self.throttle = 0  # artifact bytes per second, 0 = unlimited
        self.artifact_bytes = 0  # artifact bytes sent, over all downloads
        self.config_requested = True  # hawkBit asks for attributes at first contact
        self.config_data = []
        self.fail_feedback = 0  # answer the next N feedback POSTs with 503
        self.fail_downloads = 0  # answer the next N artifact GETs with 500
        self.actions = {}
        self.order = []
        self.next_id = 1
        self.log = []
        self.port = 0

    def base_path(self):
        return "/%s/controller/v1/%s" % (self.tenant, self.controller)

    def url(self, tail=""):
        return "http://127.0.0.1:%d%s%s" % (self.port, self.base_path(), tail)

    def current(self):
        for i in self.order:
            a = self.actions[i]
            if a["active"]:
                return a
        return None


SIM = None


def deployment_json(a):
    sha1 = a["sha1"]
    link = SIM.url("/softwaremodules/%s/artifacts/%s" % (a["sm"], a["filename"]))
    dep = {
        "download": a["download"],
        "update": a["update"],
        "chunks": [{
            "part": "os",
            "version": a["version"],
            "name": a["name"],
            "artifacts": [{
                "filename": a["filename"],
                "hashes": {"sha1": sha1, "md5": a["md5"], "sha256": a["sha256"]},
                "size": a["size"],
                "_links": {"download": {"href": link}, "download-http": {"href": link},
                           "md5sum-http": {"href": link + ".MD5SUM"}},
            }],
        }],
    }
    if a["window"] is not None:
        dep["maintenanceWindow"] = a["window"]
        if a["window"] == "unavailable":
            dep["update"] = "skip"
    return {"id": a["id"], "deployment": dep,
            "actionHistory": {"status": a["status"].upper(), "messages": []}}


def valid_feedback(fb):
    try:
        st = fb["status"]
        return (st["execution"] in EXECUTIONS and st["result"]["finished"] in FINISHED
                and isinstance(st.get("details", []), list))
    except (KeyError, TypeError):
        return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    # -- plumbing ---------------------------------------------------------------------
    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/hal+json;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_empty(self, code):
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def body_json(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            return None
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"null")
        except ValueError:
            return None

    def record(self, kind):
        with SIM.lock:
            if len(SIM.log) < MAX_LOG:
                SIM.log.append({"method": self.command, "path": self.path, "kind": kind,
                                "auth": self.headers.get("Authorization"), "time": time.time()})

    def ddi(self):
        """Splits a DDI path; checks tenant, controller and credentials."""
        base = SIM.base_path()
        path = self.path.split("?", 1)[0]
        if not (path == base or path.startswith(base + "/")):
            self.record("unknown")
            self.send_json(404, {"errorCode": "hawkbit.server.error.repo.entitiyNotFound",
                                 "message": "unknown tenant or controller"})
            return None
        if SIM.auth is not None and self.headers.get("Authorization") != SIM.auth:
            self.record("unauthorized")
            self.send_json(401, {"message": "missing or wrong security token"})
            return None
        return path[len(base):]

    # -- DDI --------------------------------------------------------------------------
    def do_GET(self):
        if self.path == "/_sim/state":
            return self.sim_state()
        tail = self.ddi()
        if tail is None:
            return
        if tail in ("", "/"):
            self.record("base")
            with SIM.lock:
                links = {}
                if SIM.config_requested:
                    links["configData"] = {"href": SIM.url("/configData")}
                a = SIM.current()
                if a is not None and a["status"] == "canceling":
                    links["cancelAction"] = {"href": SIM.url("/cancelAction/%s" % a["id"])}
                elif a is not None:
                    links["deploymentBase"] = {
                        "href": SIM.url("/deploymentBase/%s?c=%d" % (a["id"], a["rev"]))}
                body = {"config": {"polling": {"sleep": SIM.sleep}}, "_links": links}
            return self.send_json(200, body)
        m = re.fullmatch(r"/deploymentBase/([^/]+)", tail)
        if m:
            self.record("deploymentBase")
            with SIM.lock:
                a = SIM.actions.get(m.group(1))
                if a is None or not a["active"]:
                    return self.send_json(404, {"message": "no such action"})
                a["retrieved"] += 1
                return self.send_json(200, deployment_json(a))
        m = re.fullmatch(r"/cancelAction/([^/]+)", tail)
        if m:
            self.record("cancelAction")
            with SIM.lock:
                a = SIM.actions.get(m.group(1))
                if a is None or a["status"] != "canceling":
                    return self.send_json(404, {"message": "no cancel for this action"})
                return self.send_json(200, {"id": a["id"], "cancelAction": {"stopId": a["id"]}})
        m = re.fullmatch(r"/softwaremodules/([^/]+)/artifacts/([^/]+)", tail)
        if m:
            self.record("artifact")
            return self.artifact(m.group(1), m.group(2))
        self.record("unknown")
        self.send_json(404, {"message": "no such resource"})

    def artifact(self, sm, filename):
        with SIM.lock:
            a = next((x for x in SIM.actions.values()
                      if x["sm"] == sm and x["filename"] == filename), None)
            if SIM.fail_downloads > 0:
                SIM.fail_downloads -= 1
                return self.send_json(500, {"message": "injected failure"})
        if a is None:
            return self.send_json(404, {"message": "no such artifact"})
        size = a["size"]
        start, end, code = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (m.group(1) == "" and m.group(2) == ""):
                return self.send_empty(416)
            if m.group(1) == "":
                start, end = max(0, size - int(m.group(2))), size - 1
            else:
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start >= size or start > end:
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % size)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            code = 206
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", '"%s"' % a["sha1"])
        self.send_header("Content-Length", str(end - start + 1))
        if code == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
        self.end_headers()
        with open(a["file"], "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(left, 64 << 10))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                with SIM.lock:
                    SIM.artifact_bytes += len(chunk)
                left -= len(chunk)
                if SIM.throttle:
                    time.sleep(len(chunk) / SIM.throttle)

    def do_POST(self):
        if self.path.startswith("/_sim/"):
            return self.sim_post()
        tail = self.ddi()
        if tail is None:
            return
        fb = self.body_json()
        m = re.fullmatch(r"/(deploymentBase|cancelAction)/([^/]+)/feedback", tail)
        if not m:
            self.record("unknown")
            return self.send_json(404, {"message": "no such resource"})
        channel, aid = m.group(1), m.group(2)
        self.record(channel + "Feedback")
        with SIM.lock:
            if SIM.fail_feedback > 0:
                SIM.fail_feedback -= 1
                return self.send_json(503, {"message": "injected failure"})
            a = SIM.actions.get(aid)
            if a is None:
                return self.send_json(404, {"message": "no such action"})
            if not valid_feedback(fb):
                return self.send_json(400, {"message": "invalid feedback"})
            st = fb["status"]
            ex, fin = st["execution"], st["result"]["finished"]
            # The time as the client sent it: `time` ("YYYYMMDDTHHMMSS", what
            # rauc-hawkbit-updater and older servers use) and/or `timestamp` (ms, newer
            # servers; what rota sends). Absent fields stay absent.
            entry = {"execution": ex, "finished": fin, "details": st.get("details", []),
                     "id": fb.get("id")}
            for key in ("time", "timestamp"):
                if key in fb:
                    entry[key] = fb[key]
            if channel == "deploymentBase":
                a["feedback"].append(entry)
                if not a["active"]:
                    pass  # hawkBit ignores feedback for closed actions
                elif ex == "closed":
                    a["status"] = "error" if fin == "failure" else "finished"
                    a["active"] = False
                elif ex == "downloaded":
                    download_only = a["update"] == "skip" and a["window"] is None
                    a["status"] = "downloaded"
                    if download_only:
                        a["active"] = False
                elif ex in ("rejected", "canceled"):
                    a["status"] = "warning"
                else:
                    a["status"] = "running"
            else:
                a["cancel_feedback"].append(entry)
                if ex == "closed":
                    a["status"] = "error" if fin == "failure" else "canceled"
                    a["active"] = False
                elif ex == "rejected":
                    a["status"] = "cancel_rejected"
                elif ex == "canceled":
                    a["cancel_warnings"] += 1  # not a confirmation in hawkBit
        self.send_json(200, {})

    def do_PUT(self):
        tail = self.ddi()
        if tail is None:
            return
        if tail != "/configData":
            self.record("unknown")
            return self.send_json(404, {"message": "no such resource"})
        self.record("configData")
        body = self.body_json()
        ok = (isinstance(body, dict) and isinstance(body.get("data"), dict)
              and all(isinstance(k, str) and isinstance(v, str) for k, v in body["data"].items())
              and body.get("mode", "merge") in ("merge", "replace", "remove"))
        if not ok:
            return self.send_json(400, {"message": "invalid config data"})
        with SIM.lock:
            SIM.config_data.append(body)
            SIM.config_requested = False
        self.send_json(200, {})

    # -- test control -----------------------------------------------------------------
    def sim_state(self):
        with SIM.lock:
            counts = {}
            for r in SIM.log:
                counts[r["kind"]] = counts.get(r["kind"], 0) + 1
            actions = {i: {k: v for k, v in a.items() if k != "file"} for i, a in SIM.actions.items()}
            body = {"actions": actions, "config_data": SIM.config_data, "counts": counts,
                    "requests": SIM.log[-200:], "config_requested": SIM.config_requested,
                    "artifact_bytes": SIM.artifact_bytes}
        self.send_json(200, body)

    def sim_post(self):
        body = self.body_json() or {}
        with SIM.lock:
            if self.path == "/_sim/actions":
                path = body["file"]
                data = open(path, "rb").read()
                aid = str(SIM.next_id)
                SIM.next_id += 1
                for k in ("download", "update"):
                    if body.get(k, "forced") not in HANDLING:
                        return self.send_json(400, {"message": "bad " + k})
                SIM.actions[aid] = {
                    "id": aid, "sm": str(100 + int(aid)), "file": path,
                    "filename": body.get("filename", os.path.basename(path)),
                    "version": body["version"], "name": body.get("name", "gateway os"),
                    "download": body.get("download", "forced"),
                    "update": body.get("update", "forced"),
                    "window": body.get("window"), "size": len(data),
                    "sha1": hashlib.sha1(data).hexdigest(), "md5": hashlib.md5(data).hexdigest(),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "status": "running", "active": True, "feedback": [], "cancel_feedback": [],
                    "cancel_warnings": 0, "retrieved": 0, "rev": 1,
                }
                SIM.order.append(aid)
                return self.send_json(200, {"id": aid})
            m = re.fullmatch(r"/_sim/actions/([^/]+)", self.path)
            if m:
                a = SIM.actions.get(m.group(1))
                if a is None:
                    return self.send_json(404, {"message": "no such action"})
                if body.get("cancel"):
                    if a["active"]:
                        a["status"] = "canceling"
                for k in ("window", "update", "download"):
                    if k in body:
                        a[k] = body[k]
                a["rev"] += 1
                return self.send_json(200, {})
            if self.path == "/_sim/config":
                SIM.sleep = body.get("sleep", SIM.sleep)
                SIM.throttle = int(body.get("throttle", SIM.throttle))
                SIM.fail_feedback = int(body.get("fail_feedback", SIM.fail_feedback))
                SIM.fail_downloads = int(body.get("fail_downloads", SIM.fail_downloads))
                if body.get("request_config"):
                    SIM.config_requested = True
                return self.send_json(200, {})
        self.send_json(404, {"message": "no such control"})


def main():
    global SIM
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenant", default="DEFAULT")
    ap.add_argument("--controller", required=True)
    ap.add_argument("--auth", default=None, help="expected Authorization header value")
    args = ap.parse_args()
    SIM = Sim(args.tenant, args.controller, args.auth)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    SIM.port = server.server_address[1]
    print("PORT %d" % SIM.port, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
