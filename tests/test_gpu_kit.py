"""The GPU kit's jar repacking keeps everything but other platforms' native libraries."""

import zipfile

from clickstream_tools.gpu_kit import repack_jar


def test_repack_keeps_classes_and_this_platforms_natives_only(tmp_path):
    src, dst = tmp_path / "in.jar", tmp_path / "out.jar"
    entries = {
        "META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\n",
        "com/github/luben/zstd/Zstd.class": b"\xca\xfe\xba\xbe" + b"x" * 100,
        "linux/amd64/libzstd-jni-1.5.7.so": b"elf-amd64",
        "org/xerial/snappy/native/Linux/x86_64/libsnappyjava.so": b"elf-x86_64",
        "linux/aarch64/libzstd-jni-1.5.7.so": b"elf-arm",
        "darwin/x86_64/libzstd-jni-1.5.7.dylib": b"macho",
        "win/amd64/libzstd-jni-1.5.7.dll": b"pe",
    }
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)

    assert repack_jar(src, dst) == 3

    with zipfile.ZipFile(dst) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        kept = {name: z.read(name) for name in z.namelist()}
    assert kept == {k: v for k, v in entries.items()
                    if k.endswith((".MF", ".class")) or "amd64" in k and "linux" in k or "Linux/x86_64" in k}
