"""File storage, one suite for every backend (local files and S3 via SeaweedFS): unguessable keys, safe names,
traversal refusal, URL recognition, one-time uploads, retention. Backend-specific cases say which backend."""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from photomaker_server.storage import (
    FileStorage,
    LocalStorage,
    StoredFile,
    UploadError,
    sanitize_file_name,
)
from photomaker_server.storage.base import file_key, new_token

BASE = "http://127.0.0.1:8000"
BUCKET = "photomaker-tests"


class Clock:
    """Starts at the real time: S3's LastModified is the server's clock, so retention compares against it."""

    def __init__(self) -> None:
        self.t = float(int(time.time()))

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def secret() -> bytes:
    return secrets.token_hex(32).encode()


@pytest.fixture(params=["local", "s3"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def make_storage(backend, request, tmp_path, clock, secret) -> Callable[..., FileStorage]:
    """``make_storage(base_url=..., **options)``: a storage of this test's backend; every call opens a new
    instance on the same files (another process, or another API replica)."""
    if backend == "s3":
        request.getfixturevalue("s3_env")
        from photomaker_server.storage.s3 import S3Storage

        url = f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}"  # a prefix of its own: tests stay apart

        def make(base_url: str = BASE + "/", **options) -> FileStorage:
            options.setdefault("secret", secret)
            return S3Storage(url, base_url, clock=clock, **options)
    else:

        def make(base_url: str = BASE + "/", **options) -> FileStorage:
            options.setdefault("secret", secret)
            return LocalStorage(tmp_path / "files", base_url, clock=clock, **options)

    return make


@pytest.fixture
def storage(make_storage) -> FileStorage:
    return make_storage()


def split_upload_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.path.rsplit("/", 1)[1], parse_qs(parts.query)["sig"][0]


# --- names ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("photo.png", "photo.png"),
        ("my photo (1).JPG", "my_photo_1_.JPG"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\face.jpg", "face.jpg"),
        (".hidden", "hidden"),
        ("..", "file"),
        ("", "file"),
        (None, "file"),
        ("___", "file"),
        ("-rf", "rf"),
        ("фото.jpg", "_.jpg"),
        ("a\x00b.png", "a_b.png"),
    ],
)
def test_sanitize_file_name(raw, clean):
    assert sanitize_file_name(raw) == clean


def test_long_names_are_capped_keeping_the_extension():
    name = sanitize_file_name("x" * 500 + ".png")
    assert len(name) == 128 and name.endswith(".png")
    assert len(sanitize_file_name("y" * 500)) == 128


# --- put / read / info / delete ---------------------------------------------------------------------------------


def test_put_stores_under_an_unguessable_token(storage, backend, tmp_path):
    stored = storage.put(b"\x89PNG data", "image/png", "out put.png")
    token, name = stored.key.split("/")
    assert len(token) == 32 and name == "out_put.png"
    assert stored == StoredFile(
        key=stored.key,
        url=f"{BASE}/files/{token}/out_put.png",
        file_name="out_put.png",
        content_type="image/png",
        size=9,
    )
    if backend == "local":
        assert (tmp_path / "files" / token / "out_put.png").read_bytes() == b"\x89PNG data"
        assert storage.path_for(stored.key) == tmp_path / "files" / token / "out_put.png"
    assert storage.read(stored.key) == b"\x89PNG data"
    assert storage.info(stored.key) == stored
    info, chunks = storage.open(stored.key)
    assert info == stored and b"".join(chunks) == b"\x89PNG data"
    again = storage.put(b"other", "image/png", "out put.png")
    assert again.key != stored.key and storage.read(stored.key) == b"\x89PNG data"


def test_put_under_a_token_chosen_first_stores_at_the_key_known_before(storage):
    token = new_token()
    stored = storage.put(b"bytes", "image/png", "a b.png", token)
    assert stored.key == file_key(token, "a b.png") == f"{token}/a_b.png"
    assert storage.read(stored.key) == b"bytes"
    for bad in ("../escape", "short", "a/b" * 10, ""):
        with pytest.raises(ValueError):
            storage.put(b"x", "image/png", "a.png", bad)


def test_satisfies_the_protocol(storage):
    def takes(s: FileStorage) -> FileStorage:
        return s

    assert takes(storage) is storage
    for name in [n for n in dir(FileStorage) if not n.startswith("_")]:
        assert callable(getattr(storage, name)), name


def test_content_types_are_cleaned(storage):
    assert storage.put(b"x", "text/plain; charset=utf-8", "a.txt").content_type == "text/plain"
    assert storage.put(b"x", "evil\r\nSet-Cookie: a=b", "a.png").content_type == "image/png"
    assert storage.put(b"x", "", "a.jpeg").content_type == "image/jpeg"
    assert storage.put(b"x", "", "noext").content_type == "application/octet-stream"


def test_delete_and_delete_prefix(storage, backend, tmp_path):
    a = storage.put(b"a", "image/png", "a.png")
    storage.delete(a.key)
    assert storage.read(a.key) is None and storage.info(a.key) is None and storage.open(a.key) is None
    if backend == "local":
        assert not (tmp_path / "files" / a.key.split("/")[0]).exists()
    storage.delete(a.key)  # twice is fine
    storage.delete("../../etc/passwd")  # malformed: ignored

    b = storage.put(b"b", "image/png", "b.png")
    token = b.key.split("/")[0]
    b2 = storage._store(token, b"b2", "image/png", "b2.png")  # a second file under the same token
    storage.delete_prefix(token + "/")
    assert storage.read(b.key) is None and storage.read(b2.key) is None
    if backend == "local":
        assert not (tmp_path / "files" / token).exists()

    keep = storage.put(b"k", "image/png", "k.png")
    for bad in ("", "/", "..", "../", ".uploads", "a" * 10, str(tmp_path)):
        storage.delete_prefix(bad)
    assert storage.read(keep.key) == b"k"
    if backend == "local":
        assert (tmp_path / "files").is_dir()


# --- traversal --------------------------------------------------------------------------------------------------


def test_anything_but_a_plain_key_is_refused(storage, backend, tmp_path):
    good = storage.put(b"secret-ish", "image/png", "a.png")
    token = good.key.split("/")[0]
    (tmp_path / "outside.txt").write_text("outside")
    attempts = [
        "",
        token,
        f"{token}/",
        "../outside.txt",
        f"{token}/../../outside.txt",
        f"{token}/..",
        f"/{good.key}",
        str(tmp_path / "outside.txt"),
        f"{token}/.meta.json",
        f"{token}/a/b.png",
        f"{token}\\a.png",
        f"{token}/a.png\x00",
        f"{token}/%2e%2e",
        f"../{token}/a.png",
        "short/a.png",
        f"{token}/missing.png",
    ]
    for key in attempts:
        assert storage.read(key) is None, key
        assert storage.info(key) is None, key
        assert storage.open(key) is None, key
        if backend == "local":
            assert storage.path_for(key) is None, key
    assert storage.read(good.key) == b"secret-ish"


def test_planted_symlinks_are_not_followed_out_of_the_root(tmp_path, secret):
    storage = LocalStorage(tmp_path / "files", BASE, secret=secret)
    (tmp_path / "outside.txt").write_text("outside")
    token = "A" * 32
    (tmp_path / "files" / token).mkdir()
    (tmp_path / "files" / token / "link.txt").symlink_to(tmp_path / "outside.txt")
    assert storage.path_for(f"{token}/link.txt") is None


# --- URLs -------------------------------------------------------------------------------------------------------


def test_key_from_url(storage):
    stored = storage.put(b"x", "image/png", "a.png")
    assert storage.key_from_url(stored.url) == stored.key
    assert storage.key_from_url(f"http://localhost:8000/files/{stored.key}") == stored.key  # another host name
    assert storage.key_from_url(f"https://proxy.example/files/{stored.key}?dl=1") == stored.key
    token = stored.key.split("/")[0]
    for url in (
        f"{BASE}/other/{stored.key}",
        f"{BASE}/files/{token}",
        f"{BASE}/files/../{stored.key}",
        f"{BASE}/files/{token}/../../x.png",
        f"{BASE}/files/{token}/%2E%2E",
        f"ftp://127.0.0.1/files/{stored.key}",
        "data:image/png;base64,AAAA",
        "not a url",
    ):
        assert storage.key_from_url(url) is None, url


def test_key_from_url_under_a_base_path(make_storage):
    storage = make_storage("https://example.com/photomaker")
    stored = storage.put(b"x", "image/png", "a.png")
    assert stored.url.startswith("https://example.com/photomaker/files/")
    assert storage.key_from_url(stored.url) == stored.key
    assert storage.key_from_url(f"http://10.1.2.3:8000/photomaker/files/{stored.key}") == stored.key
    assert storage.key_from_url(f"https://example.com/files/{stored.key}") is None
    assert storage.key_from_url(f"http://x/files/{stored.key}", base_url="http://127.0.0.1:8000") == stored.key


# --- signed one-time uploads ------------------------------------------------------------------------------------


def test_upload_round_trip(storage):
    upload_url, file_url = storage.create_upload("image/jpeg", "selfie 1.jpg")
    assert upload_url.startswith(f"{BASE}/storage/upload/") and "?sig=" in upload_url
    assert file_url.startswith(f"{BASE}/files/") and file_url.endswith("/selfie_1.jpg")
    assert storage.key_from_url(file_url) is not None
    assert storage.read(storage.key_from_url(file_url)) is None  # not there until uploaded

    upload_id, sig = split_upload_url(upload_url)
    stored = storage.accept_upload(upload_id, sig, b"jpeg bytes")
    assert stored.url == file_url and stored.content_type == "image/jpeg" and stored.size == 10
    assert storage.read(storage.key_from_url(file_url)) == b"jpeg bytes"


def test_upload_urls_take_the_base_url_they_are_handed_out_with(storage):
    upload_url, file_url = storage.create_upload("image/png", "a.png", base_url="https://api.example/pm")
    assert upload_url.startswith("https://api.example/pm/storage/upload/")
    assert file_url.startswith("https://api.example/pm/files/")
    assert storage.key_from_url(file_url, base_url="https://api.example/pm") is not None


def test_a_short_secret_is_refused(make_storage):
    with pytest.raises(ValueError):
        make_storage(secret=b"too short")


def test_upload_url_is_one_time(storage):
    upload_id, sig = split_upload_url(storage.create_upload("image/png", "a.png")[0])
    storage.accept_upload(upload_id, sig, b"first")
    with pytest.raises(UploadError) as info:
        storage.accept_upload(upload_id, sig, b"second")
    assert info.value.reason == "used"


def _race_uploads(n: int, accept) -> list[str]:  # noqa: ANN001
    """``n`` threads call ``accept(i)`` at the same moment; each outcome: ``ok`` or the refusal's reason."""
    outcomes: list[str] = []
    barrier = threading.Barrier(n)

    def put(i: int) -> None:
        barrier.wait()
        try:
            accept(i)
            outcomes.append("ok")
        except UploadError as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(outcomes)


def test_concurrent_uses_of_one_upload_url_let_exactly_one_through(storage):
    upload_id, sig = split_upload_url(storage.create_upload("image/png", "a.png")[0])
    outcomes = _race_uploads(8, lambda i: storage.accept_upload(upload_id, sig, b"data %d" % i))
    assert outcomes == ["ok"] + ["used"] * 7


def test_bad_signature_does_not_consume_the_upload(storage):
    upload_id, sig = split_upload_url(storage.create_upload("image/png", "a.png")[0])
    for bad in ("", "0" * 64, sig[:-1] + ("0" if sig[-1] != "0" else "1")):
        with pytest.raises(UploadError) as info:
            storage.accept_upload(upload_id, bad, b"x")
        assert info.value.reason == "bad_signature"
    _other_id, other_sig = split_upload_url(storage.create_upload("image/png", "b.png")[0])
    with pytest.raises(UploadError):
        storage.accept_upload(upload_id, other_sig, b"x")  # a signature is bound to its upload
    assert storage.accept_upload(upload_id, sig, b"x").size == 1


def test_expired_and_unknown_uploads(storage, clock):
    upload_id, sig = split_upload_url(storage.create_upload("image/png", "a.png", ttl_s=60)[0])
    clock.t += 61
    with pytest.raises(UploadError) as info:
        storage.accept_upload(upload_id, sig, b"x")
    assert info.value.reason == "expired"
    for bad_id in ("A" * 32, "../../upload-secret", "", ".uploads"):
        with pytest.raises(UploadError) as info:
            storage.accept_upload(bad_id, sig, b"x")
        assert info.value.reason == "not_found"


def test_check_upload_refuses_what_accept_would_without_a_body(storage, clock):
    upload_id, sig = split_upload_url(storage.create_upload("image/png", "a.png", ttl_s=60)[0])
    storage.check_upload(upload_id, sig)  # fine, and uses nothing up
    for args, reason in (((upload_id, "0" * 64), "bad_signature"), (("A" * 32, sig), "not_found"),
                         (("../x", sig), "not_found")):
        with pytest.raises(UploadError) as info:
            storage.check_upload(*args)
        assert info.value.reason == reason
    storage.accept_upload(upload_id, sig, b"x")
    with pytest.raises(UploadError) as info:
        storage.check_upload(upload_id, sig)
    assert info.value.reason == "used"
    other_id, other_sig = split_upload_url(storage.create_upload("image/png", "b.png", ttl_s=60)[0])
    clock.t += 61
    with pytest.raises(UploadError) as info:
        storage.check_upload(other_id, other_sig)
    assert info.value.reason == "expired"


def test_upload_size_limit(make_storage):
    storage = make_storage(max_upload_bytes=4)
    upload_id, sig = split_upload_url(storage.create_upload("image/png", "a.png")[0])
    with pytest.raises(UploadError) as info:
        storage.accept_upload(upload_id, sig, b"12345")
    assert info.value.reason == "too_large"
    assert storage.accept_upload(upload_id, sig, b"1234").size == 4  # the refusal did not use it up


def test_uploads_work_across_instances_sharing_the_storage(make_storage):
    """One API process (or replica) creates the URL; another one, with the same secret, accepts it."""
    first = make_storage()
    upload_url, file_url = first.create_upload("image/png", "a.png")
    second = make_storage()
    stored = second.accept_upload(*split_upload_url(upload_url), b"png")
    assert stored.url == file_url and first.read(stored.key) == b"png"


def test_a_different_secret_rejects_the_signature(make_storage):
    first = make_storage()
    upload_id, sig = split_upload_url(first.create_upload("image/png", "a.png")[0])
    rotated = make_storage(secret=secrets.token_hex(32).encode())
    with pytest.raises(UploadError) as info:
        rotated.accept_upload(upload_id, sig, b"x")
    assert info.value.reason == "bad_signature"


def test_purge_uploads(storage, clock):
    used_id, used_sig = split_upload_url(storage.create_upload("image/png", "a.png", ttl_s=10)[0])
    storage.accept_upload(used_id, used_sig, b"x")
    fresh_id, fresh_sig = split_upload_url(storage.create_upload("image/png", "b.png", ttl_s=10_000)[0])
    clock.t += 100
    assert storage.purge_uploads(grace_s=50) == 1
    with pytest.raises(UploadError) as info:
        storage.accept_upload(used_id, used_sig, b"x")
    assert info.value.reason == "not_found"
    assert storage.accept_upload(fresh_id, fresh_sig, b"y").size == 1


def test_one_time_across_instances_racing(make_storage):
    """Two replicas get the same upload URL at once: exactly one stores it."""
    replicas = [make_storage(), make_storage()]
    upload_id, sig = split_upload_url(replicas[0].create_upload("image/png", "a.png")[0])
    outcomes = _race_uploads(6, lambda i: replicas[i % 2].accept_upload(upload_id, sig, b"data %d" % i))
    assert outcomes == ["ok"] + ["used"] * 5


# --- retention --------------------------------------------------------------------------------------------------


def test_delete_older_than(storage, clock):
    a = storage.put(b"a", "image/png", "a.png")
    b = storage.put(b"b", "application/zip", "b.zip")
    upload_id, sig = split_upload_url(storage.create_upload("image/png", "c.png", ttl_s=4 * 3600)[0])
    clock.t += 2 * 3600
    assert storage.delete_older_than(3 * 3600) == 0
    assert storage.read(a.key) == b"a" and storage.read(b.key) == b"b"
    assert storage.delete_older_than(3600) == 2
    assert storage.read(a.key) is None and storage.read(b.key) is None
    stored = storage.accept_upload(upload_id, sig, b"c")  # its pending record was not taken for a file
    assert storage.read(stored.key) == b"c"
