#!/usr/bin/env python3
"""Power cuts on the qemu-arm64 node, which boots through the same U-Boot boot script and runs
the same meshd as the boards. The node's card is a file kept across runs; killing QEMU (the
whole process group, SIGKILL) is the power cut. Three kinds of cut, in a seeded order, at
seeded moments:

  counter  while U-Boot's boot script reads, counts and writes the boot state record;
  install  while `meshd upgrade install` writes the inactive slot;
  commit   after an installed slot has booted, around the moment meshd marks it good.

Then an install over https (refused without the server's CA, done with --ca), and a hang:
meshd is stopped and the hardware watchdog (QEMU's i6300esb) must reset the node.

After every cut the node is powered on again and must reach `meshos ready`: the slot that was
running when an install was cut, the new slot after a commit was cut. The same seed gives the
same kinds and moments (the node's own timing still varies). The seed is the day's date unless
given, so each day's runs cut at other moments than the day before; it is printed first.

Usage: ci/powercut-test.py [--seed N] [--rounds N]   (needs MESHOS_SIGN_KEY, as make test
sets; builds N+1 itself; logs in out/powercut-test/)
"""
import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MESHIMG = os.environ.get("MESHIMG", str(ROOT / "target/debug/meshimg"))
BOARD = "qemu-arm64"
AUTOBOOT = r"^Hit any key to stop autoboot"
READY = re.compile(r"^meshos ready version=(\S+) board=\S+ slot=([ab])")


NODES = []  # powered off when the test fails, so no QEMU outlives it


def fail(msg):
    print(f"powercut-test: FAILED: {msg}", file=sys.stderr)
    for node in NODES:
        if node.proc and node.proc.poll() is None:
            node.cut()
    sys.exit(1)


def ok(msg):
    print(f"powercut-test: {msg}", flush=True)


class Node:
    """One node: its card, its console and the QEMU running it (when powered)."""

    def __init__(self, work, image, port, key, boot_files):
        self.work, self.image, self.port, self.key = work, image, port, key
        self.card = work / "card.img"
        self.boot_files = boot_files
        self.proc = None
        self.lines = []  # (time, line) of the current power-on
        self.cond = threading.Condition()
        self.boots = 0
        self.log = open(work / "console.log", "w")
        NODES.append(self)

    def power_on(self):
        self.boots += 1
        args = [MESHIMG, "qemu", BOARD, "--image", str(self.image), "--card", str(self.card), "--forward", f"{self.port}:22"]
        for f in self.boot_files:
            args += ["--boot-file", f]
        self.boot_files = []  # put on the card once
        self.log.write(f"\n===== power on #{self.boots}\n")
        with self.cond:
            self.lines = []
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc):
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.log.write(line + "\n")
            self.log.flush()
            with self.cond:
                if proc is self.proc:
                    self.lines.append((time.monotonic(), line))
                self.cond.notify_all()
        self.log.flush()

    def wait_line(self, pattern, timeout, start=0):
        """The first console line at or after index `start` matching `pattern`: (index, match)."""
        rx = re.compile(pattern)
        until = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i][1])
                    if m:
                        return i, m
                    i += 1
                left = until - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and i >= len(self.lines)):
                    return None, None
                self.cond.wait(min(left, 1.0))

    def seen(self, pattern, start=0):
        rx = re.compile(pattern)
        with self.cond:
            return any(rx.search(l) for _, l in self.lines[start:])

    def cut(self):
        """Power cut: QEMU and meshimg die at once, nothing is flushed by the guest."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.write("===== POWER CUT\n")
        self.log.flush()

    def ready(self, timeout=300):
        i, m = self.wait_line(READY.pattern, timeout)
        if m is None:
            self.cut()
            tail = "\n".join(l for _, l in self.lines[-25:])
            fail(f"power-on #{self.boots}: no 'meshos ready' within {timeout} s; console tail:\n{tail}")
        return m.group(1), m.group(2).upper()

    def ssh_args(self, command, *options):
        return ["ssh", "-q", "-i", str(self.key), "-p", str(self.port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", *options, "root@127.0.0.1", command]

    def ssh(self, command, stdin=None, timeout=120, check=True):
        r = subprocess.run(self.ssh_args(command), stdin=stdin, capture_output=True, timeout=timeout)
        if check and r.returncode != 0:
            fail(f"on the node: {command}: exit {r.returncode}: {r.stderr.decode(errors='replace')}")
        return r

    def wait_ssh(self, timeout=90):
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.ssh("true", check=False, timeout=30).returncode == 0:
                return
            time.sleep(2)
        fail("ssh to the node")

    def upload(self, bundle):
        with open(bundle, "rb") as f:
            self.ssh("cat > /tmp/next.bundle", stdin=f, timeout=300)


def wait_not_on_trial(node, timeout=180):
    """meshd refuses to install while the running slot is on trial (it would overwrite the last
    good slot): wait until the trial, if any, has committed."""
    until = time.monotonic() + timeout
    while True:
        st = json.loads(node.ssh("meshd upgrade status --json").stdout)
        last = st.get("last_install") or {}
        if not (last.get("step") == "installed" and last.get("target") == st["running_slot"]):
            return
        if time.monotonic() > until:
            fail(f"slot {st['running_slot']} stayed on trial for {timeout} s: {st}")
        time.sleep(2)


def boot_partition(card):
    """Byte offset and length of the card's first partition (the boot FAT)."""
    with open(card, "rb") as f:
        mbr = f.read(512)
    return int.from_bytes(mbr[454:458], "little") * 512, int.from_bytes(mbr[458:462], "little") * 512


def lose_clusters(card, work):
    """What a cut in the middle of writing a file can leave: clusters allocated in the FAT that
    no directory entry reaches. A file is copied on with mtools, then its entry marked deleted."""
    start, length = boot_partition(card)
    blob = work / "lost.bin"
    blob.write_bytes(os.urandom(300_000))
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    subprocess.run(["mcopy", "-o", "-i", f"{card}@@{start}", str(blob), "::/LOST.BIN"], check=True, env=env)
    with open(card, "r+b") as f:
        f.seek(start)
        part = f.read(length)
        at = part.find(b"LOST    BIN")
        if at < 0:
            fail("lost.bin's directory entry is not on the boot partition")
        f.seek(start + at)
        f.write(b"\xe5")


def fat_check(card, work):
    """fsck.vfat -n of the card's boot partition (read-only): what the cuts did to the FAT."""
    start, length = boot_partition(card)
    with open(card, "rb") as f:
        f.seek(start)
        (work / "boot.vfat").write_bytes(f.read(length))
    r = subprocess.run(["fsck.vfat", "-n", str(work / "boot.vfat")], capture_output=True, text=True)
    (work / "boot.vfat").unlink()
    # A cut file system is left marked dirty (the flag sits in the boot sector, so its backup
    # differs by that byte); anything else is damage worth reading.
    harmless = ("fsck.fat ", "There are differences between boot sector and its backup", "This is mostly harmless", "Differences: (offset",
                "  65:01/00", "  Not automatically fixing", "Dirty bit is set", " Automatically removing dirty bit", "Leaving filesystem unchanged")
    rest = [l.strip() for l in r.stdout.splitlines() + r.stderr.splitlines() if l.strip() and not l.startswith(harmless) and "boot.vfat: " not in l]
    if not rest:
        return "clean" if r.returncode == 0 and "Dirty bit" not in r.stdout else "consistent (fsck.vfat -n: only the dirty flag a cut leaves)"
    return "fsck.vfat -n: " + " / ".join(rest)[:400]


def https_install(node, work, bundle, port):
    """`meshd upgrade install https://…`: the bundle streamed from a server on this host (reached
    through an ssh tunnel), first without trusting its CA (refused, nothing written), then with
    --ca. The install is left to boot next."""
    tls = work / "tls"
    tls.mkdir()
    def openssl(*a):
        subprocess.run(["openssl", *a], cwd=tls, check=True, capture_output=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", "-new", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=meshos test CA", "-days", "2",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (tls / "ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext")

    import http.server, ssl, functools
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(bundle.parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls / "server.pem", tls / "server.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    node.wait_ssh()
    with open(tls / "ca.pem", "rb") as f:
        node.ssh("cat > /tmp/ca.pem", stdin=f)
    before = node.ssh("meshd upgrade status --json").stdout
    url = f"https://127.0.0.1:{port}/{bundle.name}"
    def install(extra):
        args = node.ssh_args(f"meshd upgrade install {url} {extra} --allow-downgrade --no-reboot",
                             "-o", "ExitOnForwardFailure=yes", "-R", f"127.0.0.1:{port}:127.0.0.1:{port}")
        return subprocess.run(args, capture_output=True, text=True, timeout=600)
    r = install("")
    if r.returncode == 0 or "UnknownIssuer" not in r.stderr + r.stdout:
        fail(f"an https server whose CA the node was not given was not refused for its certificate: {r.stdout}{r.stderr}")
    after = json.loads(node.ssh("meshd upgrade status --json").stdout)
    # The boot state, without what changes by itself: the last install's record (the refusal is
    # recorded there) and the upgrade agent's phase and note, which the daemon publishes on its
    # own tick (it may still say "trial" for a moment after the slot was marked good).
    def boot_state(st):
        return {k: v for k, v in st.items() if k not in ("last_install", "phase", "note")}
    if boot_state(json.loads(before)) != boot_state(after):
        fail(f"the refused https install changed the boot state: {before} -> {after}")
    ok(f"https without the server's CA: refused ({(r.stderr.strip().splitlines() or [''])[-1][:120]}); boot state untouched")
    t = time.monotonic()
    r = install("--ca /tmp/ca.pem")
    if r.returncode != 0 or "installed" not in r.stdout:
        fail(f"install over https with --ca: {r.stdout}{r.stderr}")
    ok(f"installed {bundle.name} over https (streamed, {bundle.stat().st_size >> 20} MiB) in {time.monotonic() - t:.1f} s: {r.stdout.strip()}")
    server.shutdown()


def build_next(work, version):
    out = work / "next"
    log = work / "build-next.log"
    with open(log, "w") as f:
        r = subprocess.run(["nice", "-n", "10", MESHIMG, "build", BOARD, "--bundle-only", "--out", str(out), "--image-version", version], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if r.returncode != 0:
        fail(f"building N+1: see {log}")
    return out / BOARD / f"meshos-{BOARD}-{version}.bundle"


def main():
    ap = argparse.ArgumentParser(description="Power cuts during install, commit and the boot counter update.")
    today = time.strftime("%Y%m%d", time.gmtime())
    ap.add_argument("--seed", type=int, default=int(os.environ.get("POWERCUT_SEED", today)))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("POWERCUT_ROUNDS", "12")))
    ap.add_argument("--port", type=int, default=int(os.environ.get("POWERCUT_PORT", "20400")))
    args = ap.parse_args()
    if not os.environ.get("MESHOS_SIGN_KEY"):
        fail("set MESHOS_SIGN_KEY to the key the qemu-arm64 image was signed with")
    os.chdir(ROOT)
    version = subprocess.run(["cargo", "pkgid", "-p", "meshimg"], capture_output=True, text=True, check=True).stdout.strip().rsplit("#", 1)[-1].rsplit("@", 1)[-1]
    work = ROOT / "out/powercut-test"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    n_image = ROOT / f"out/{BOARD}/meshos-{BOARD}-{version}.img"
    bundles = {version: ROOT / f"out/{BOARD}/meshos-{BOARD}-{version}.bundle"}
    t0 = time.monotonic()
    bundles[f"{version}.1"] = build_next(work, f"{version}.1")
    ok(f"built N+1 in {time.monotonic() - t0:.0f} s")

    key = work / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "powercut-test", "-f", str(key)], check=True)
    (work / "mesh.yaml").write_text(f"apiVersion: meshos/v1\nssh:\n  authorizedKeys:\n    - {(work / 'key.pub').read_text().strip()}\nupgrade:\n  healthTimeout: 25\n")
    node = Node(work, n_image, args.port, key, [f"mesh.yaml={work / 'mesh.yaml'}"])

    ok(f"seed {args.seed}, {args.rounds} cuts (run again with --seed {args.seed} for the same kinds and moments)")
    rng = random.Random(args.seed)
    kinds = [("counter", "install", "commit")[i % 3] for i in range(args.rounds)]
    rng.shuffle(kinds)
    stats = {k: [] for k in ("counter", "install", "commit")}
    fat_repairs = []
    node.power_on()
    running_version, running = node.ready()
    i, _ = node.wait_line(AUTOBOOT, 1)
    j, _ = node.wait_line(r"^meshos: booting slot", 1)
    script_after = node.lines[j][0] - node.lines[i][0]
    ok(f"U-Boot's autoboot prompt to the boot script's 'booting slot' line: {script_after:.2f} s")
    t_start = time.monotonic()
    for n, kind in enumerate(kinds, 1):
        other = next(v for v in bundles if v != running_version)
        if kind == "counter":
            # A reboot, cut around the moment the boot script writes the record. The script
            # runs in milliseconds, quicker than a console line reaches this test, so the cut
            # is timed from U-Boot's autoboot prompt, at a seeded fraction (60-115 %) of the
            # time the first power-on took from that prompt to the script's 'booting slot' line.
            delay = rng.uniform(0.6, 1.15) * script_after
            mark = len(node.lines)
            node.wait_ssh()
            node.ssh("reboot", check=False)
            i, m = node.wait_line(AUTOBOOT, 120, mark)
            if m is None:
                fail("the reboot never reached U-Boot's autoboot")
            time.sleep(delay)
            node.cut()
            written = node.seen(r"^meshos: booting slot", i)
            what = f"{delay:.2f} s after the autoboot prompt ({'after' if written else 'before or during'} the record's write)"
            expect = None
        elif kind == "install":
            delay = rng.uniform(0.0, 2.0)
            node.wait_ssh()
            wait_not_on_trial(node)
            node.upload(bundles[other])
            install = subprocess.Popen(node.ssh_args("meshd upgrade install /tmp/next.bundle --allow-downgrade --no-reboot"),
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            started = time.monotonic()
            out = b""
            while b"marked bad, writing it" not in out:
                chunk = install.stdout.readline()
                if not chunk:
                    fail(f"install never started writing: {out.decode(errors='replace')}")
                out += chunk
            time.sleep(delay)
            node.cut()
            install.kill()
            rest = install.communicate()[0]
            done = b"boots next" in out + rest
            what = f"{delay:.1f} s into writing slot {'AB'[running == 'A']} ({'after the install finished' if done else 'mid-write'}; verify took {time.monotonic() - started - delay:.1f} s)"
            # Unfinished: the target was marked bad first, so the running slot boots again.
            expect = None if done else running
        else:
            node.wait_ssh()
            wait_not_on_trial(node)
            node.upload(bundles[other])
            target = "AB"[running == "A"]
            mark = len(node.lines)
            node.ssh("meshd upgrade install /tmp/next.bundle --allow-downgrade", check=False, timeout=300)
            i, m = node.wait_line(rf"^meshos ready version={re.escape(other)} .* slot={target.lower()}", 300, mark)
            if m is None:
                fail(f"the installed slot {target} never came up")
            delay = rng.uniform(0.0, 15.0)
            time.sleep(delay)
            node.cut()
            committed = node.seen(rf"^meshd: slot {target} healthy, marked good", i)
            what = f"{delay:.1f} s after slot {target} came up ({'after' if committed else 'before'} it was marked good)"
            # Marked good or not, the new slot has attempts left and is first in the order.
            expect = target
        # What the cut left on the boot partition must be repaired by the next boot, before
        # anything mounts it (the initramfs's fsck.fat; meshd says what was repaired).
        damage = fat_check(node.card, work)
        node.power_on()
        running_version, running = node.ready()
        if expect and running != expect:
            fail(f"cut {n} ({kind}, {what}): the node came up on slot {running}, expected {expect}")
        stats[kind].append(what)
        repaired = ""
        if damage.startswith("fsck.vfat"):
            _, m = node.wait_line(r"^meshd: boot partition repaired at boot: (.*)", 60)
            if m is None:
                fail(f"cut {n} left the boot partition damaged ({damage}) and the next boot did not repair it")
            repaired = f"; the boot repaired the FAT ({m.group(1)[:100]})"
            fat_repairs.append(m.group(1))
        ok(f"cut {n}/{len(kinds)} {kind}: {what}; powered on again: ready on slot {running} ({running_version}){repaired}")

    node.wait_ssh()
    wait_not_on_trial(node)
    # Every boot ends with the running slot marked good again once healthy (its attempts
    # restored): until then the boot state still changes by itself.
    _, m = node.wait_line(r"^meshd: (slot [AB] healthy, marked good|ROLLBACK)", 180)
    if m is None:
        fail("the last boot never marked its slot good")
    status = json.loads(node.ssh("meshd upgrade status --json").stdout)

    https_install(node, work, bundles[next(v for v in bundles if v != status["version"])], args.port + 1)

    # A hang: meshd stops feeding the hardware watchdog, which resets the node.
    _, m = node.wait_line(r"^meshd: watchdog /dev/watchdog armed \((\d+) s\)", 1)
    if m is None:
        fail("meshd did not arm the watchdog (no 'watchdog /dev/watchdog armed' line)")
    timeout = int(m.group(1))
    mark = len(node.lines)
    node.ssh("kill -STOP $(pidof meshd)")
    stopped = time.monotonic()
    i, reset = node.wait_line(r"^U-Boot 20", timeout + 60, mark)
    if reset is None:
        fail(f"meshd was stopped but the watchdog ({timeout} s) did not reset the node")
    waited = node.lines[i][0] - stopped
    node.ready()
    ok(f"meshd stopped: the watchdog reset the node {waited:.0f} s later (timeout {timeout} s) and it came up again")
    # Whatever the seed's cuts did, a boot partition with lost clusters must be repaired.
    node.cut()
    lose_clusters(node.card, work)
    damage = fat_check(node.card, work)
    if not damage.startswith("fsck.vfat"):
        fail(f"lost clusters made on the boot partition, but fsck.vfat -n finds it {damage}")
    node.power_on()
    node.ready()
    _, m = node.wait_line(r"^meshd: boot partition repaired at boot: (.*)", 60)
    if m is None:
        fail(f"the boot partition had lost clusters ({damage}) and the boot did not repair them")
    ok(f"lost clusters on the boot partition ({damage[:120]}): the next boot repaired them ({m.group(1)[:120]})")
    # After all of it, a clean shutdown must leave a clean boot partition.
    node.wait_ssh()
    node.ssh("poweroff", check=False)
    try:
        node.proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        fail("the node did not power off within 120 s")
    fat = fat_check(node.card, work)
    if fat != "clean":
        fail(f"after the power cuts and a clean shutdown the boot partition is not clean: {fat}")
    summary = {k: len(v) for k, v in stats.items()}
    hits = sum("before or during" in w for w in stats["counter"]) + sum("mid-write" in w for w in stats["install"]) + sum("before it" in w for w in stats["commit"])
    ok(f"all {len(kinds)} power cuts (seed {args.seed}: {summary}; {hits} inside the step's critical window) were followed by a boot to 'meshos ready' "
       f"({node.boots} power-ons in {time.monotonic() - t_start:.0f} s); finally slot {status['running_slot']} runs {status['version']}, order {' '.join(status['boot_order'])}; "
       f"{len(fat_repairs)} cuts damaged the boot partition and the next boot repaired each; after a clean shutdown it is {fat}")


if __name__ == "__main__":
    main()
