"""Secrets every replica must agree on come from configuration or the job database, never from one host's disk;
a single-machine data dir's secret files are adopted the first time."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from photomaker_server.api.auth import KeyRing, owner_id
from photomaker_server.deployment import DeploymentError, open_deployment
from photomaker_server.jobs.factory import open_job_store
from photomaker_server.webhooks import WebhookSigner
from photomaker_server.settings import Settings
from photomaker_server.shared_secrets import generated_api_key, load_shared_secrets


def _settings(data_dir: Path, **extra) -> Settings:
    return Settings(data_dir=data_dir, **extra)


def test_two_replicas_with_their_own_data_dirs_agree(tmp_path):
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = _settings(tmp_path / "a", database_url=db), _settings(tmp_path / "b", database_url=db)
    with open_job_store(db) as store_a, open_job_store(db) as store_b:
        first, second = load_shared_secrets(a, store_a), load_shared_secrets(b, store_b)
        assert first == second
        assert len(first.upload_secret) >= 32 and len(first.token_secret) == 32
        assert WebhookSigner.from_pem(first.webhook_key_pem).jwks() == WebhookSigner.from_pem(second.webhook_key_pem).jwks()
        key_a, key_b = generated_api_key(a, store_a), generated_api_key(b, store_b)
    assert key_a.key == key_b.key and key_a.created and not key_b.created
    for data_dir in (a.data_dir, b.data_dir):  # each machine gets its copy for the local CLI and web page
        path = data_dir / "api-key"
        assert path.read_text().strip() == key_a.key and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(a.data_dir.glob("*secret*")) and not list(a.data_dir.glob("*.pem"))


def test_processes_starting_together_get_one_set(tmp_path):
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    results: list = []
    barrier = threading.Barrier(6)

    def start(i: int) -> None:
        settings = _settings(tmp_path / f"p{i}", database_url=db)
        with open_job_store(db) as store:
            barrier.wait()
            results.append((load_shared_secrets(settings, store), generated_api_key(settings, store).key))

    threads = [threading.Thread(target=start, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and all(r == results[0] for r in results)


def test_configuration_wins_over_the_database(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    settings = _settings(tmp_path, upload_secret="u" * 40, token_secret="t" * 40, webhook_signing_key=pem)
    with open_job_store(settings.job_database_url) as store:
        secrets = load_shared_secrets(settings, store)
    assert secrets.upload_secret == b"u" * 40 and secrets.token_secret == b"t" * 40
    assert secrets.webhook_key_pem == pem.encode()
    assert "u" * 40 not in repr(settings), "configured secrets never appear in reprs or logs"


def test_a_legacy_data_dir_keeps_its_secrets_and_key(tmp_path):
    """What a single-machine installation of the previous release left in its data dir becomes the deployment's."""
    legacy = _settings(tmp_path)
    pem = WebhookSigner.generate()
    from cryptography.hazmat.primitives import serialization

    pem_bytes = pem._key.private_bytes(  # noqa: SLF001
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "upload-secret").write_text("ab" * 32)
    (tmp_path / "token-secret").write_bytes(b"T" * 32)
    (tmp_path / "webhook-signing-key.pem").write_bytes(pem_bytes)
    (tmp_path / "api-key").write_text("pm_old-key\n")
    db = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    with open_job_store(db) as store:
        secrets = load_shared_secrets(legacy.model_copy(update={"database_url": db}), store)
        key = generated_api_key(legacy, store)
        # A new replica, with nothing on its disk, gets the same.
        other = _settings(tmp_path / "replica", database_url=db)
        assert load_shared_secrets(other, store) == secrets
        assert generated_api_key(other, store).key == "pm_old-key"
    assert secrets.upload_secret == b"ab" * 32 and secrets.token_secret == b"T" * 32
    assert WebhookSigner.from_pem(secrets.webhook_key_pem).jwks() == pem.jwks()  # receivers keep their pinned key
    assert key.key == "pm_old-key" and not key.created


def test_keyring_accepts_configured_generated_and_local_keys(tmp_path):
    with open_job_store(f"sqlite:///{tmp_path / 'jobs.db'}") as store:
        plain = _settings(tmp_path / "plain")
        generated = generated_api_key(plain, store)
        ring = KeyRing(plain, generated)
        assert ring.created and ring.local_key == generated.key
        assert ring.owner_for(f"Key {generated.key}") == owner_id(generated.key)
        assert ring.owner_for("Key nope") is None and ring.owner_for(None) is None

        configured = _settings(tmp_path / "configured", api_keys=["k1", "k2"])
        assert generated_api_key(configured, store) is None  # configured keys: nothing is generated
        (configured.data_dir / "api-key").parent.mkdir(parents=True, exist_ok=True)
        (configured.data_dir / "api-key").write_text("local-one\n")
        ring = KeyRing(configured, None)
        assert not ring.created and ring.local_key == "local-one"
        for key in ("k1", "k2", "local-one"):
            assert ring.owner_for(f"Key {key}") == owner_id(key)
        assert ring.owner_for(f"Key {generated.key}") is None


def test_a_bad_configured_webhook_key_stops_the_start_with_one_line(tmp_path):
    settings = _settings(tmp_path, webhook_signing_key="not a pem")
    with pytest.raises(DeploymentError, match="webhook signing key"):
        open_deployment(settings)
