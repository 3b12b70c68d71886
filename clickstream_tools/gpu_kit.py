"""What a lent GPU machine needs to run the broker-backed benchmarks there, in under 64 MiB.

The lent machines have PyTorch, NumPy and the test tools, but no Java, no network and none of the
stream's own libraries, and a device call carries at most 64 MiB. Built here (with network and a
JDK), the kit is ~45 MB:

- `whl/`: the cp312 wheels the machine lacks (faust-streaming, aiokafka, rocksdict, ... ; `WHEELS`);
- `jre.tar.xz`: a Java 17 runtime cut by jlink to the modules the broker loads (~17 MB; a full JDK
  is ~260 MB);
- `klibs.tar.xz`: the broker's jars from the Maven cache, with the native libraries of other
  platforms dropped and re-packed uncompressed so that xz compresses across them (~15 MB; 44 MB as
  resolved).

    python -m clickstream_tools.gpu_kit build .gpukit     # here (.gitignore has .gpukit/)
    # there (carry .gpukit), before `python -m benchmarks.throughput --device cuda ...`:
    eval "$(python -m clickstream_tools.gpu_kit unpack .gpukit)"

`unpack` installs the wheels into /tmp/gpukit/site, unpacks the runtime and the jars (the jars as a
resolved broker cache, so `broker.resolve_jars` finds them without Maven) and prints the exports
(PATH, PYTHONPATH, CLICKSTREAM_CACHE_DIR, and CLICKSTREAM_GIT_SHA, since a device copy has no .git).
Side effects: files under the kit directory (build) or /tmp/gpukit (unpack); `pip`, `jlink`,
`tar` child processes.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from . import broker

# what the lent machines lacked (their image has torch, numpy, aiohttp, prometheus-client,
# safetensors, rich, pytest, matplotlib); pinned by our pyproject's ranges, resolved without deps
WHEELS = ("faust-streaming", "mode-streaming", "aiokafka", "kafka-python", "orjson", "rocksdict",
          "confluent-kafka", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py",
          "aiohttp-cors", "async-timeout", "colorlog", "croniter", "intervaltree", "pytz",
          "terminaltables", "tzdata", "venusian")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux_2_5_x86_64", "manylinux1_x86_64")
# the modules the broker (Kafka 4.x, KRaft) loads, from `jdeps` over its jars plus what it reaches
# by reflection (JMX, JFR, DNS naming, zipfs for the log4j config)
JRE_MODULES = ("java.base,java.datatransfer,java.xml,java.prefs,java.desktop,java.instrument,"
               "java.logging,java.management,java.security.sasl,java.naming,java.net.http,java.rmi,"
               "java.scripting,java.security.jgss,java.transaction.xa,java.sql,jdk.crypto.ec,jdk.jfr,"
               "jdk.management,jdk.naming.dns,jdk.unsupported,jdk.zipfs")
NATIVE = re.compile(r"\.(so|dylib|dll|jnilib|a)$")
OWN_PLATFORM = re.compile(r"linux.*(amd64|x86_64|x86-64)|(amd64|x86_64|x86-64).*linux", re.I)
UNPACKED = Path("/tmp/gpukit")


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True)


def build_wheels(out: Path, python_version: str = "3.12") -> None:
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
          "--python-version", python_version, *[a for p in PLATFORMS for a in ("--platform", p)],
          "--dest", str(out / "whl"), *WHEELS])


def build_jre(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        jre = Path(tmp) / "jre"
        _run(["jlink", "--add-modules", JRE_MODULES, "--strip-debug", "--no-man-pages",
              "--no-header-files", "--compress=0", "--output", str(jre)])
        _run(["tar", "-C", tmp, "-cJf", str(out / "jre.tar.xz"), "jre"])


def repack_jar(src: Path, dst: Path) -> int:
    """Copy a jar uncompressed, without native libraries for other platforms; entries dropped."""
    dropped = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            if NATIVE.search(item.filename) and not OWN_PLATFORM.search(item.filename):
                dropped += 1
                continue
            zout.writestr(item.filename, zin.read(item), zipfile.ZIP_STORED)
    return dropped


def build_jars(out: Path) -> None:
    libs = broker.resolve_jars()
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "libs"
        dst.mkdir()
        for jar in sorted(libs.glob("*.jar")):
            repack_jar(jar, dst / jar.name)
        _run(["tar", "-C", tmp, "-cJf", str(out / "klibs.tar.xz"), "libs"])


def unpack(kit: Path, git_sha: str | None) -> list[str]:
    """Install and unpack the kit on the device; return the shell exports that point at it."""
    site, cache = UNPACKED / "site", UNPACKED / "cache"
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
          "--target", str(site), *map(str, sorted((kit / "whl").glob("*.whl")))])
    _run(["tar", "-C", str(UNPACKED), "-xJf", str(kit / "jre.tar.xz")])
    libs = cache / f"kafka-{broker.KAFKA_VERSION}"
    libs.mkdir(parents=True, exist_ok=True)
    _run(["tar", "-C", str(libs), "-xJf", str(kit / "klibs.tar.xz")])
    (libs / "libs" / ".complete").touch()  # what broker.resolve_jars checks before calling Maven
    exports = {"PATH": f"{UNPACKED / 'jre' / 'bin'}:$PATH",
               "PYTHONPATH": f"{site}:{Path.cwd()}", "CLICKSTREAM_CACHE_DIR": str(cache)}
    if git_sha:
        exports["CLICKSTREAM_GIT_SHA"] = git_sha
    return [f"export {k}={v if k == 'PATH' else shlex.quote(v)}" for k, v in exports.items()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the kit here (needs network, pip and a JDK's jlink)")
    b.add_argument("kit", type=Path)
    b.add_argument("--python-version", default="3.12", help="the device's Python (3.12 on the lent machines)")
    u = sub.add_parser("unpack", help="on the device: install the kit, print the exports")
    u.add_argument("kit", type=Path)
    u.add_argument("--git-sha", help="the commit the copied tree is (benchmarks record it)")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        if shutil.which("jlink") is None:
            sys.exit("jlink (from a Java 17 JDK) is needed to build the runtime")
        args.kit.mkdir(parents=True, exist_ok=True)
        build_wheels(args.kit, args.python_version)
        build_jre(args.kit)
        build_jars(args.kit)
        size = sum(f.stat().st_size for f in args.kit.rglob("*") if f.is_file())
        print(f"{args.kit}: {size / 2**20:.1f} MiB (a device call carries at most 64 MiB in all)")
    else:
        print("\n".join(unpack(args.kit, args.git_sha)))


if __name__ == "__main__":
    main()
