#!/usr/bin/env python3
"""The container image's stories, run by deploy/test-image.sh against the image it built.

Each container runs as an operator would run it, locked down: read-only root filesystem (and no
tmpfs on /tmp), all capabilities dropped, no privilege escalation, the image's non-root user.
Host networking, so the containers reach the provider stand-in and the PostgreSQL on loopback.

Standard library only. Environment: IMAGE (the image), PODMAN (the podman command with its
options), PODMAN_RUN (extra `podman run` options: ulimits), WEARLINK_TEST_POSTGRES_URL.
"""
import hashlib
import hmac
import http.server
import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

PODMAN = shlex.split(os.environ.get("PODMAN", "podman"))
IMAGE = os.environ["IMAGE"]
LOCKED_DOWN = shlex.split(os.environ.get("PODMAN_RUN", "")) + [
    "--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL", "--security-opt", "no-new-privileges",
]
RUN_OPTIONS = LOCKED_DOWN + ["--network", "host"]
POSTGRES = os.environ.get("WEARLINK_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
TAG = f"wl-image-{os.getpid()}"
created = {"containers": [], "volumes": []}


def podman(*args, check=True, input=None):
    done = subprocess.run(PODMAN + list(args), capture_output=True, text=True, input=input)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method, url, token=None, body=None, headers=None):
    """(status, body as JSON or text, headers); no redirect is followed."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", f"Bearer {token}")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=10) as answer:
            status, raw, heads = answer.status, answer.read(), answer.headers
    except urllib.error.HTTPError as e:
        status, raw, heads = e.code, e.read(), e.headers
    try:
        return status, json.loads(raw), heads
    except ValueError:
        return status, raw.decode(errors="replace"), heads


class Instance:
    """One container of the image, serving on a loopback port."""

    def __init__(self, name, env, volume=None):
        self.name, self.port = f"{TAG}-{name}", free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = dict(env, WEARLINK_BIND=f"127.0.0.1:{self.port}")
        self.volume = volume

    def start(self):
        args = ["run", "-d", "--name", self.name] + RUN_OPTIONS
        for key, value in self.env.items():
            args += ["-e", f"{key}={value}"]
        if self.volume:
            args += ["-v", f"{self.volume}:/data"]
        podman(*args, IMAGE)
        created["containers"].append(self.name)
        self.wait_ready()
        return self

    def restart(self):
        podman("start", self.name)
        self.wait_ready()

    def wait_ready(self):
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if request("GET", f"{self.base}/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} never answered /readyz:\n{podman('logs', self.name, check=False)}")

    def exec(self, *args):
        return json.loads(podman("exec", self.name, "wearlink", *args))

    def stop(self):
        """SIGTERM; answers (seconds it took, exit code)."""
        started = time.time()
        podman("stop", "-t", "10", self.name)
        took = time.time() - started
        return took, int(podman("inspect", self.name, "--format", "{{.State.ExitCode}}"))


class StravaStandIn(http.server.ThreadingHTTPServer):
    """Strava's OAuth and data API as far as a connect needs them (the URLs, fields and
    redirect of developers.strava.com/docs/authentication): authorize approves at once."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), StravaHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def env(self):
        return {
            "WEARLINK_PROVIDER_STRAVA_AUTHORIZE_URL": f"{self.url}/oauth/authorize",
            "WEARLINK_PROVIDER_STRAVA_TOKEN_URL": f"{self.url}/oauth/token",
            "WEARLINK_PROVIDER_STRAVA_REVOKE_URL": f"{self.url}/oauth/deauthorize",
            "WEARLINK_PROVIDER_STRAVA_API_URL": f"{self.url}/api/v3",
        }


class StravaHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body, headers=()):
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for header in headers:
            self.send_header(*header)
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/oauth/authorize":
            back = query["redirect_uri"] + "?" + urllib.parse.urlencode(
                {"state": query["state"], "code": secrets.token_hex(8), "scope": "read,activity:read_all"})
            self.send_response(302)
            self.send_header("Location", back)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path.startswith("/api/v3/athlete/activities"):
            self.answer(200, [], [("X-RateLimit-Limit", "200,2000"), ("X-RateLimit-Usage", "1,1")])
        else:
            self.answer(404, {"message": "Record Not Found"})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/oauth/token":
            self.answer(200, {"token_type": "Bearer", "expires_at": int(time.time()) + 21600, "expires_in": 21600,
                              "refresh_token": secrets.token_hex(20), "access_token": secrets.token_hex(20),
                              "athlete": {"id": 134815}})
        else:
            self.answer(200, {})


def connect_a_patient(instance, admin, strava):
    """Enables Strava, stores its app, creates a patient and connects it; answers the patient id."""
    assert request("PUT", f"{instance.base}/v1/project/settings/WEARABLE_STRAVA_ENABLED", admin, {"enabled": True})[0] == 200
    status, body, _ = request("PUT", f"{instance.base}/v1/wearables/strava/credentials", admin,
                              {"clientId": "5150", "clientSecret": "strava-secret"})
    assert status == 200, body
    status, patient, _ = request("POST", f"{instance.base}/fhir/R4/Patient", admin, {"resourceType": "Patient"})
    assert status == 201, patient
    status, started, _ = request("POST", f"{instance.base}/v1/wearables/strava/connect", admin,
                                 {"patientId": patient["id"], "redirectUri": "https://my.dashboard/done"})
    assert status == 200 and started["authorizationUrl"].startswith(strava.url), started
    status, _, headers = request("GET", started["authorizationUrl"])
    assert status == 302, status
    status, _, headers = request("GET", headers["Location"])
    assert status == 303 and "status=connected" in headers["Location"], (status, headers["Location"])
    return patient["id"]


def endpoints_of(instance, token, patient):
    status, bundle, _ = request("GET", f"{instance.base}/fhir/R4/Endpoint?patient=Patient/{patient}", token)
    assert status == 200, bundle
    return [e["resource"] for e in bundle.get("entry", [])]


def story_the_image_defaults_serve_on_a_published_port():
    """As the README runs it: the image's own bind (0.0.0.0:8080) behind a published port, its
    anonymous /data volume."""
    name, port = f"{TAG}-published", free_port()
    podman("run", "-d", "--name", name, *LOCKED_DOWN, "-p", f"127.0.0.1:{port}:8080", IMAGE)
    created["containers"].append(name)
    deadline = time.time() + 30
    while True:
        try:
            if request("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200:
                break
        except OSError:
            pass
        assert time.time() < deadline, podman("logs", name, check=False)
        time.sleep(0.1)
    podman("rm", "-f", "-v", name)
    created["containers"].remove(name)
    print("  ok: the image's defaults: /readyz on a published port (0.0.0.0:8080 inside), data on its volume")


def story_sqlite_volume_restart_and_lockdown(strava):
    volume = f"{TAG}-data"
    podman("volume", "create", volume)
    created["volumes"].append(volume)
    instance = Instance("sqlite", strava.env(), volume).start()
    project = instance.exec("project", "create", "Clinic")
    admin = project["adminToken"]
    patient = connect_a_patient(instance, admin, strava)
    assert [e["status"] for e in endpoints_of(instance, admin, patient)] == ["active"]

    # Locked down as run: the process is the image's non-root user, its root is read-only.
    user = podman("top", instance.name, "huser").splitlines()[1:]
    assert user and all(u.strip() == "65532" for u in user), user
    assert podman("inspect", instance.name, "--format", "{{.HostConfig.ReadonlyRootfs}}") == "true"
    assert podman("image", "inspect", IMAGE, "--format", "{{.Config.User}}") == "65532:65532"
    # It wrote only to /data (the volume); the rest of the container's layer is what podman
    # itself mounts (/etc/hosts, /etc/resolv.conf, /etc/hostname, /run/.containerenv).
    podman_own = {"/data", "/etc", "/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/run", "/run/.containerenv"}
    changed = [line for line in podman("diff", instance.name).splitlines() if line.split()[-1] not in podman_own]
    assert not changed, changed

    took, code = instance.stop()
    assert code == 0 and took < 10, (took, code)
    instance.restart()
    assert [e["status"] for e in endpoints_of(instance, admin, patient)] == ["active"], "kept across a restart"
    print(f"  ok: SQLite on a volume: ready, project via podman exec, a patient connected, kept across a restart; "
          f"uid 65532, read-only root, nothing written outside /data")
    return instance, project


def story_sigterm_in_a_flood_loses_no_acknowledged_webhook(instance, project):
    admin = project["adminToken"]
    key = "polar-webhook-key"
    assert request("PUT", f"{instance.base}/v1/project/settings/WEARABLE_POLAR_ENABLED", admin, {"enabled": True})[0] == 200
    assert request("PUT", f"{instance.base}/v1/wearables/polar/credentials", admin,
                   {"clientId": "polar-client", "clientSecret": "polar-secret", "webhookSecret": key})[0] == 200
    url = f"{instance.base}/v1/wearables/polar/webhook/{project['projectId']}"
    acknowledged, lock, sent = [], threading.Lock(), [0]

    def send(worker):
        # Polar's webhook: HMAC-SHA256 of the body under the webhook's key, hex.
        for i in range(worker, 900, 16):
            entity = f"flood{i}"
            body = json.dumps({"event": "EXERCISE", "user_id": 4242, "entity_id": entity,
                               "timestamp": "2026-11-25T10:15:00.000Z",
                               "url": f"https://www.polaraccesslink.com/v3/exercises/{entity}"}).encode()
            signature = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
            try:
                status = request("POST", url, body=body, headers={
                    "Polar-Webhook-Event": "EXERCISE", "Polar-Webhook-Signature": signature})[0]
            except OSError:
                return  # the server is gone
            with lock:
                sent[0] += 1
                if status == 200:
                    acknowledged.append(entity)

    threads = [threading.Thread(target=send, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    while len(acknowledged) < 100:
        time.sleep(0.005)
    took, code = instance.stop()
    for t in threads:
        t.join()
    assert code == 0 and took < 10, f"SIGTERM: exit {code} after {took:.1f} s"
    instance.restart()
    status, events, _ = request("GET", f"{instance.base}/v1/wearables/events", admin)
    assert status == 200, events
    stored = {e["object"].get("entity_id") for e in events["events"]}
    lost = [e for e in acknowledged if e not in stored]
    assert not lost, f"acknowledged but lost: {lost}"
    print(f"  ok: SIGTERM in a flood of webhooks: stopped in {took:.1f} s (exit 0); "
          f"{len(acknowledged)} of {sent[0]} sent acknowledged, every one stored after the restart")
    podman("stop", "-t", "10", instance.name)


def story_two_containers_serve_one_project_on_postgresql(strava):
    database = f"wl_image_{os.getpid()}"
    server = POSTGRES.rsplit("/", 1)[0]
    psql = ["psql", "-q", "-v", "ON_ERROR_STOP=1", f"{server}/postgres", "-c"]
    subprocess.run(psql + [f"CREATE DATABASE {database}"], check=True)
    try:
        env = dict(strava.env(), WEARLINK_DATABASE_URL=f"{server}/{database}",
                   WEARLINK_MASTER_KEY=subprocess.run(["openssl", "rand", "-base64", "32"], capture_output=True,
                                                      text=True, check=True).stdout.strip())
        a = Instance("pg-a", env).start()
        b = Instance("pg-b", env).start()
        project = a.exec("project", "create", "Clinic")
        admin = project["adminToken"]
        patient = connect_a_patient(a, admin, strava)
        assert [e["status"] for e in endpoints_of(b, admin, patient)] == ["active"], "B sees what A wrote"
        # A connect started on B finishes wherever its callback lands: on A.
        status, started, _ = request("POST", f"{b.base}/v1/wearables/strava/connect", admin,
                                     {"patientId": patient, "redirectUri": "https://my.dashboard/done"})
        assert status == 200, started
        back = request("GET", started["authorizationUrl"])[2]["Location"]
        status, _, headers = request("GET", back.replace(b.base, a.base))
        assert status == 303 and "status=connected" in headers["Location"], status
        # A token revoked through B is refused by A at once (the cache hears the change).
        member = b.exec("token", "create", "--project", project["projectId"])
        podman("exec", "-i", b.name, "wearlink", "token", "revoke", input=member["token"] + "\n")
        assert request("GET", f"{a.base}/v1/project/settings", member["token"])[0] == 401
        for instance in (a, b):
            took, code = instance.stop()
            assert code == 0 and took < 10, (took, code)
        print("  ok: two containers on one PostgreSQL serve the same project (connect on B finished on A, "
              "a token revoked on B refused by A)")
    finally:
        for name in created["containers"]:
            podman("rm", "-f", "-v", name, check=False)
        created["containers"].clear()
        subprocess.run(psql + [f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"], check=False)


def main():
    strava = StravaStandIn()
    started = time.time()
    try:
        story_the_image_defaults_serve_on_a_published_port()
        instance, project = story_sqlite_volume_restart_and_lockdown(strava)
        story_sigterm_in_a_flood_loses_no_acknowledged_webhook(instance, project)
        story_two_containers_serve_one_project_on_postgresql(strava)
    except Exception:
        for name in created["containers"]:
            print(f"--- log of {name}:\n{podman('logs', '--tail', '40', name, check=False)}", file=sys.stderr)
        raise
    finally:
        for name in created["containers"]:
            podman("rm", "-f", "-v", name, check=False)
        for volume in created["volumes"]:
            podman("volume", "rm", "-f", volume, check=False)
        strava.shutdown()
    print(f"image stories: all passed in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
