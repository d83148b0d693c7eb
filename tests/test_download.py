"""`download`: streaming from a local HTTP server, resume after an interrupted transfer,
checksum and count verification, safe and atomic extraction of tar and zip archives."""
from __future__ import annotations

import hashlib
import io
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dmlbench.bench.data import load_dataset
from dmlbench.bench.data.download import ARCHIVES, Archive, download, safe_extract
from dmlbench.bench.errors import UserError
from tests.test_real_data import (CUB_PER_CLASS, build_cars_folders, build_cub, build_sop,
                                  cars_counts, cub_counts, sop_counts)

# ---------------------------------------------------------------------------------------------
# a local HTTP server with Range support that can cut a transfer short


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut_after: int | None = None      # close the connection after this many body bytes, once
    honour_range = True
    log: list[tuple[str, str | None]] = []

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        cls = type(self)
        name = self.path.lstrip("/")
        rng = self.headers.get("Range")
        cls.log.append((name, rng))
        if name not in cls.files:
            self.send_error(404)
            return
        data = cls.files[name]
        start = 0
        if rng and cls.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cls.cut_after is not None:
            body, cls.cut_after = body[:cls.cut_after], None
            self.close_connection = True
        self.wfile.write(body)


@pytest.fixture
def server():
    handler = type("H", (_Handler,), {"files": {}, "log": [], "cut_after": None,
                                      "honour_range": True})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True)
    t.start()
    handler.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield handler
    httpd.shutdown()
    httpd.server_close()


# ---------------------------------------------------------------------------------------------
# archives of fixture trees


def _tar_bytes(src: Path, arcname: str | None = None, extra=()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        if arcname is not None:
            tf.add(src, arcname=arcname)
        for info, data in extra:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _zip_bytes(src: Path, prefix: str = "", extra=()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, prefix + p.relative_to(src).as_posix())
        for info, data in extra:
            zf.writestr(info, data)
    return buf.getvalue()


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


@pytest.fixture(scope="module")
def cub_tgz(tmp_path_factory) -> bytes:
    src = tmp_path_factory.mktemp("cub_src")
    build_cub(src)
    # the real archive also has a top-level attributes.txt beside CUB_200_2011/
    att = tarfile.TarInfo("attributes.txt")
    att.size = 4
    return _tar_bytes(src / "CUB_200_2011", "CUB_200_2011", [(att, b"1 x\n")])


def _cub_archive(url: str, md5: str | None, size: int | None = None) -> Archive:
    a = ARCHIVES["cub"]
    return Archive(urls=(url,), filename=a.filename, kind="tar", dest=a.dest, member=a.member,
                   md5=md5, size=size)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


CUB_COUNTS = cub_counts(CUB_PER_CLASS)


# ---------------------------------------------------------------------------------------------
# download


def test_builtin_archives_are_the_public_ones():
    assert ARCHIVES["cub"].urls[0].startswith(
        "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz")
    assert ARCHIVES["cub"].md5 == "97eceeb196236b17998738112f37df78"
    assert ARCHIVES["sop"].urls[0].endswith("/cs/cvgl/Stanford_Online_Products.zip")
    assert ARCHIVES["sop"].md5 == "7f73d41a2f44250d4779881525aea32e"
    assert "stanford-car-dataset-by-classes-folder" in ARCHIVES["cars196"].urls[0]
    assert ARCHIVES["cars196"].md5 is None and ARCHIVES["cars196"].member is None


def test_download_verify_extract_from_http(server, cub_tgz, tmp_path):
    server.files["CUB_200_2011.tgz"] = cub_tgz
    spec = _cub_archive(f"{server.base}/CUB_200_2011.tgz", _md5(cub_tgz), len(cub_tgz))
    dest = download("cub", tmp_path, archive=spec, expected=CUB_COUNTS, progress=False)
    assert dest == tmp_path / "CUB_200_2011"
    assert _leftovers(tmp_path) == ["CUB_200_2011"]   # no archive, no .part, no temp folder
    assert len(load_dataset("cub", str(tmp_path))) == CUB_COUNTS["images"]
    # a second call finds the dataset in place and does not touch the network
    n = len(server.log)
    assert download("cub", tmp_path, archive=spec, expected=CUB_COUNTS) == dest
    assert len(server.log) == n


def test_interrupted_download_keeps_part_and_resumes_with_range(server, cub_tgz, tmp_path):
    server.files["CUB_200_2011.tgz"] = cub_tgz
    spec = _cub_archive(f"{server.base}/CUB_200_2011.tgz", _md5(cub_tgz))
    cut = len(cub_tgz) // 3
    server.cut_after = cut
    with pytest.raises(UserError) as e:
        download("cub", tmp_path, archive=spec, expected=CUB_COUNTS, progress=False)
    assert "resumes" in str(e.value)
    part = tmp_path / "CUB_200_2011.tgz.part"
    assert _leftovers(tmp_path) == [part.name]          # nothing extracted, only the .part
    assert part.read_bytes() == cub_tgz[:cut]
    download("cub", tmp_path, archive=spec, expected=CUB_COUNTS, progress=False)
    assert server.log[-1] == ("CUB_200_2011.tgz", f"bytes={cut}-")
    assert _leftovers(tmp_path) == ["CUB_200_2011"]
    assert len(load_dataset("cub", str(tmp_path))) == CUB_COUNTS["images"]


def test_server_ignoring_range_restarts_from_zero(server, cub_tgz, tmp_path):
    server.files["CUB_200_2011.tgz"] = cub_tgz
    server.honour_range = False
    (tmp_path / "CUB_200_2011.tgz.part").write_bytes(b"\x00" * 100)  # stale junk
    spec = _cub_archive(f"{server.base}/CUB_200_2011.tgz", _md5(cub_tgz))
    download("cub", tmp_path, archive=spec, expected=CUB_COUNTS, progress=False)
    assert _leftovers(tmp_path) == ["CUB_200_2011"]


def test_checksum_mismatch_is_refused_and_nothing_extracted(server, cub_tgz, tmp_path):
    server.files["CUB_200_2011.tgz"] = cub_tgz
    spec = _cub_archive(f"{server.base}/CUB_200_2011.tgz", "0" * 32)
    with pytest.raises(UserError, match="checksum mismatch.*nothing was extracted"):
        download("cub", tmp_path, archive=spec, expected=CUB_COUNTS, progress=False)
    assert _leftovers(tmp_path) == []
    # an archive already in ROOT (e.g. put there by hand) is verified too, and removed if bad
    (tmp_path / "CUB_200_2011.tgz").write_bytes(cub_tgz[:-10])
    spec = _cub_archive(f"{server.base}/CUB_200_2011.tgz", _md5(cub_tgz))
    with pytest.raises(UserError, match="checksum mismatch"):
        download("cub", tmp_path, archive=spec, expected=CUB_COUNTS, progress=False)
    assert _leftovers(tmp_path) == []


def test_archive_put_in_root_by_hand_is_used(server, cub_tgz, tmp_path):
    (tmp_path / "CUB_200_2011.tgz").write_bytes(cub_tgz)
    spec = _cub_archive(f"{server.base}/CUB_200_2011.tgz", _md5(cub_tgz))
    download("cub", tmp_path, archive=spec, expected=CUB_COUNTS, progress=False)
    assert server.log == [] and _leftovers(tmp_path) == ["CUB_200_2011"]


def test_complete_part_file_answered_416_is_finished(server, cub_tgz, tmp_path):
    server.files["CUB_200_2011.tgz"] = cub_tgz
    (tmp_path / "CUB_200_2011.tgz.part").write_bytes(cub_tgz)
    spec = _cub_archive(f"{server.base}/CUB_200_2011.tgz", _md5(cub_tgz))  # size unknown
    download("cub", tmp_path, archive=spec, expected=CUB_COUNTS, progress=False)
    assert server.log == [("CUB_200_2011.tgz", f"bytes={len(cub_tgz)}-")]
    assert _leftovers(tmp_path) == ["CUB_200_2011"]


def test_size_mismatch_is_refused(server, cub_tgz, tmp_path):
    server.files["CUB_200_2011.tgz"] = cub_tgz
    spec = _cub_archive(f"{server.base}/CUB_200_2011.tgz", None, len(cub_tgz) + 1)
    with pytest.raises(UserError, match="expected"):
        download("cub", tmp_path, archive=spec, expected=CUB_COUNTS, progress=False)
    assert _leftovers(tmp_path) == []


def test_unreachable_url_is_one_clear_error(server, tmp_path):
    spec = _cub_archive(f"{server.base}/missing.tgz", None)
    with pytest.raises(UserError, match="cannot download CUB_200_2011.tgz.*HTTP 404"):
        download("cub", tmp_path, archive=spec, progress=False)
    assert _leftovers(tmp_path) == []


def test_wrong_counts_after_extraction_are_refused(server, cub_tgz, tmp_path):
    server.files["CUB_200_2011.tgz"] = cub_tgz
    spec = _cub_archive(f"{server.base}/CUB_200_2011.tgz", None)
    with pytest.raises(UserError, match="images: found 23, expected 11,788"):
        download("cub", tmp_path, archive=spec, progress=False)   # the published counts
    # the archive stays (it is complete) but nothing was installed or left half-extracted
    assert _leftovers(tmp_path) == ["CUB_200_2011.tgz"]


def test_root_that_is_the_dataset_folder_is_recognised(tmp_path):
    d = build_cub(tmp_path)
    assert download("cub", d, archive=_cub_archive("http://127.0.0.1:9/x", None),
                    expected=CUB_COUNTS) == d


def test_ctrl_c_keeps_the_part_file(server, cub_tgz, tmp_path, monkeypatch):
    import dmlbench.bench.data.download as dl

    class Interrupted(io.BytesIO):
        status = 200
        headers = {"Content-Length": str(len(cub_tgz))}

        def read(self, n=-1):
            if self.tell() >= 1000:
                raise KeyboardInterrupt
            return super().read(min(n, 1000))

    monkeypatch.setattr(dl, "_open", lambda url, offset: Interrupted(cub_tgz))
    with pytest.raises(UserError, match="interrupted; the 1,000 bytes received are kept"):
        download("cub", tmp_path, archive=_cub_archive("http://x/CUB.tgz", _md5(cub_tgz)),
                 progress=False)
    assert _leftovers(tmp_path) == ["CUB_200_2011.tgz.part"]
    assert (tmp_path / "CUB_200_2011.tgz.part").read_bytes() == cub_tgz[:1000]


def test_failed_download_message_offers_the_manual_route(tmp_path):
    a = ARCHIVES["cars196"]
    spec = Archive(urls=("http://127.0.0.1:9/x.zip",), filename=a.filename, kind="zip",
                   dest=a.dest, member=None, page=a.page)
    with pytest.raises(UserError) as e:
        download("cars196", tmp_path, archive=spec, progress=False)
    msg = str(e.value)
    assert a.page in msg and str(tmp_path / a.filename) in msg and "\n" not in msg


def test_existing_incomplete_folder_is_not_overwritten(tmp_path):
    (tmp_path / "CUB_200_2011").mkdir()
    with pytest.raises(UserError, match="already exists but is not a complete cub"):
        download("cub", tmp_path, archive=_cub_archive("http://127.0.0.1:9/x", None))


def test_sop_zip_with_top_folder_from_file_url(tmp_path):
    src = tmp_path / "src"
    build_sop(src)
    data = _zip_bytes(src / "Stanford_Online_Products", "Stanford_Online_Products/")
    (tmp_path / "mirror.zip").write_bytes(data)
    a = ARCHIVES["sop"]
    spec = Archive(urls=((tmp_path / "mirror.zip").as_uri(),), filename=a.filename, kind="zip",
                   dest=a.dest, member=a.member, md5=_md5(data), size=len(data))
    root = tmp_path / "data"
    dest = download("sop", root, archive=spec, expected=sop_counts(), progress=False)
    assert _leftovers(root) == ["Stanford_Online_Products"] and dest.name == a.dest
    assert len(load_dataset("sop", str(root))) == sop_counts()["images"]


def test_cars_zip_without_top_folder_is_verified_by_counts(server, tmp_path):
    src = tmp_path / "src"
    build_cars_folders(src)
    data = _zip_bytes(src)       # like the Kaggle archive: names.csv etc. at the top level
    server.files["cars.zip"] = data
    a = ARCHIVES["cars196"]
    spec = Archive(urls=(f"{server.base}/cars.zip",), filename=a.filename, kind="zip",
                   dest=a.dest, member=None)
    root = tmp_path / "data"
    dest = download("cars196", root, archive=spec, expected=cars_counts(), progress=False)
    assert _leftovers(root) == ["CARS196"] and dest == root / "CARS196"
    assert load_dataset("cars196", str(root)).meta["layout"] == "folders"


# ---------------------------------------------------------------------------------------------
# unsafe archives: refused before anything is written


def _tar_with(tmp_path: Path, info: tarfile.TarInfo, data: bytes | None = None) -> Path:
    ok = tarfile.TarInfo("CUB_200_2011/ok.txt")
    ok.size = 2
    p = tmp_path / "bad.tgz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.addfile(ok, io.BytesIO(b"ok"))
        if data is not None:
            info.size = len(data)
        tf.addfile(info, io.BytesIO(data) if data is not None else None)
    p.write_bytes(buf.getvalue())
    return p


def _tarinfo(name: str, type_=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.type, i.linkname = type_, linkname
    return i


@pytest.mark.parametrize("info,data,why", [
    (_tarinfo("../evil.txt"), b"x", "escapes"),
    (_tarinfo("CUB_200_2011/../../evil.txt"), b"x", "escapes"),
    (_tarinfo("/tmp/dmlbench-evil.txt"), b"x", "absolute"),
    (_tarinfo("CUB_200_2011/link", tarfile.SYMTYPE, "/etc/passwd"), None, "symbolic link"),
    (_tarinfo("CUB_200_2011/hard", tarfile.LNKTYPE, "CUB_200_2011/ok.txt"), None, "hard link"),
    (_tarinfo("CUB_200_2011/dev", tarfile.CHRTYPE), None, "device"),
    (_tarinfo("CUB_200_2011/fifo", tarfile.FIFOTYPE), None, "device, FIFO"),
])
def test_unsafe_tar_members_are_refused(tmp_path, info, data, why):
    p = _tar_with(tmp_path, info, data)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError, match=f"refusing to extract bad.tgz.*{why}"):
        safe_extract(p, out, kind="tar")
    assert list(out.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/dmlbench-evil.txt").exists()


def _zip_with(tmp_path: Path, info: zipfile.ZipInfo, data: bytes) -> Path:
    p = tmp_path / "bad.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("Stanford_Online_Products/ok.txt", b"ok")
        zf.writestr(info, data)
    return p


def _zipinfo(name: str, mode: int | None = None) -> zipfile.ZipInfo:
    i = zipfile.ZipInfo(name)
    if mode is not None:
        i.create_system = 3
        i.external_attr = mode << 16
    return i


@pytest.mark.parametrize("info,why", [
    (_zipinfo("../evil.txt"), "escapes"),
    (_zipinfo("Stanford_Online_Products/../../evil.txt"), "escapes"),
    (_zipinfo("Stanford_Online_Products\\..\\..\\evil.txt"), "escapes"),
    (_zipinfo("/tmp/dmlbench-evil.txt"), "absolute"),
    (_zipinfo("Stanford_Online_Products/link", stat.S_IFLNK | 0o777), "symbolic link"),
    (_zipinfo("Stanford_Online_Products/dev", stat.S_IFCHR | 0o600), "device"),
])
def test_unsafe_zip_members_are_refused(tmp_path, info, why):
    p = _zip_with(tmp_path, info, b"/etc/passwd")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError, match=f"refusing to extract bad.zip.*{why}"):
        safe_extract(p, out, kind="zip")
    assert list(out.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/dmlbench-evil.txt").exists()


def test_download_of_a_traversal_archive_leaves_nothing(server, tmp_path):
    src = tmp_path / "src"
    build_cub(src)
    evil = tarfile.TarInfo("CUB_200_2011/../../evil.txt")
    evil.size = 4
    data = _tar_bytes(src / "CUB_200_2011", "CUB_200_2011", [(evil, b"evil")])
    server.files["CUB_200_2011.tgz"] = data
    root = tmp_path / "data"
    spec = _cub_archive(f"{server.base}/CUB_200_2011.tgz", _md5(data))
    with pytest.raises(UserError, match="refusing to extract"):
        download("cub", root, archive=spec, expected=CUB_COUNTS, progress=False)
    assert _leftovers(root) == ["CUB_200_2011.tgz"]    # verified archive kept, nothing extracted
    assert not (tmp_path / "evil.txt").exists()


def test_corrupt_archive_is_a_user_error(tmp_path):
    p = tmp_path / "x.zip"
    p.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(UserError, match="corrupt"):
        safe_extract(p, tmp_path, kind="zip")


def test_safe_extract_writes_regular_files_only(tmp_path):
    src = tmp_path / "src"
    build_sop(src)
    p = tmp_path / "ok.zip"
    p.write_bytes(_zip_bytes(src / "Stanford_Online_Products", "Stanford_Online_Products/"))
    out = tmp_path / "out"
    out.mkdir()
    safe_extract(p, out, kind="zip")
    files = [q for q in out.rglob("*")]
    assert files and all(q.is_dir() or (q.is_file() and not q.is_symlink()) for q in files)
    assert len(load_dataset("sop", str(out))) == sop_counts()["images"]
