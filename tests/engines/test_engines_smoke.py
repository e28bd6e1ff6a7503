"""Smoke test of the real engines started by scripts/infra/engines.py.

Each engine is checked for real: PostgreSQL with psql, Kafka by producing and
consuming one record (confluent-kafka), OpenSearch by indexing and searching a
document and, when the k-NN plugin loaded, a lucene knn_vector query. The last
tests crash (SIGKILL) PostgreSQL and Kafka and restart them on their kept data, as
the fault tests will.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.engine_processes import Engines

# client libraries the lead pins in requirements/dev.txt (see docs/engines.md)
confluent_kafka = pytest.importorskip("confluent_kafka", reason="pip install confluent-kafka")
opensearchpy = pytest.importorskip("opensearchpy", reason="pip install opensearch-py")

pytestmark = pytest.mark.engines

KAFKA_TOPIC = f"smoke-{uuid.uuid4().hex[:8]}"
KAFKA_VALUE = b"hello from chatplane"


def psql(engines: Engines, sql: str) -> str:
    """Run SQL as the chatplane role through the DSN; returns unaligned tuples-only output."""
    proc = subprocess.run(
        [
            "psql",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-tA",
            engines.env["CHATPLANE_POSTGRES_DSN"],
            "-c",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_state_files_written(engines: Engines) -> None:
    env_file = (engines.state_dir / "engines.env").read_text()
    for key in ("CHATPLANE_POSTGRES_DSN", "CHATPLANE_KAFKA_BOOTSTRAP", "CHATPLANE_OPENSEARCH_URL"):
        assert f"{key}=" in env_file
    assert engines.env["CHATPLANE_POSTGRES_DSN"].startswith("postgresql://chatplane@127.0.0.1:")
    assert engines.env["CHATPLANE_KAFKA_BOOTSTRAP"].startswith("127.0.0.1:")
    assert engines.env["CHATPLANE_OPENSEARCH_URL"].startswith("http://127.0.0.1:")
    status = engines.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr


def test_postgres(engines: Engines) -> None:
    assert psql(engines, "SELECT 1") == "1"
    assert psql(engines, "SHOW listen_addresses") == "127.0.0.1"
    assert psql(engines, "SELECT current_user || '/' || current_database()") == (
        "chatplane/chatplane"
    )
    assert int(psql(engines, "SHOW server_version_num")) >= 150000
    psql(engines, "CREATE TABLE smoke (id int PRIMARY KEY, body text)")
    psql(engines, "INSERT INTO smoke VALUES (1, 'persisted')")
    assert psql(engines, "SELECT body FROM smoke WHERE id = 1") == "persisted"


def _consume_one(bootstrap: str, topic: str, timeout: float = 60) -> bytes:
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"smoke-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            value = msg.value()
            assert isinstance(value, bytes)
            return value
        raise AssertionError(f"no record on {topic} within {timeout}s")
    finally:
        consumer.close()


def test_kafka_produce_consume(engines: Engines) -> None:
    bootstrap = engines.env["CHATPLANE_KAFKA_BOOTSTRAP"]
    delivery_errors: list[object] = []
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True}
    )
    # the topic does not exist: the broker auto-creates it (auto.create.topics.enable)
    producer.produce(
        KAFKA_TOPIC,
        key=b"k1",
        value=KAFKA_VALUE,
        on_delivery=lambda err, _msg: delivery_errors.append(err),
    )
    assert producer.flush(30) == 0
    assert delivery_errors == [None]
    assert _consume_one(bootstrap, KAFKA_TOPIC) == KAFKA_VALUE


def _opensearch(engines: Engines) -> Any:
    return opensearchpy.OpenSearch(hosts=[engines.env["CHATPLANE_OPENSEARCH_URL"]], timeout=30)


def test_opensearch_index_and_search(engines: Engines) -> None:
    client = _opensearch(engines)
    info = client.info()
    assert info["version"]["number"].split(".")[0] in ("2", "3")
    health = client.cluster.health(wait_for_status="yellow")
    assert health["status"] in ("green", "yellow")
    client.indices.create(
        index="smoke", body={"settings": {"number_of_shards": 1, "number_of_replicas": 0}}
    )
    client.index(index="smoke", id="1", body={"text": "the quick brown fox"}, refresh=True)
    client.index(index="smoke", id="2", body={"text": "a lazy dog"}, refresh=True)
    hits = client.search(index="smoke", body={"query": {"match": {"text": "fox"}}})["hits"]
    assert [h["_id"] for h in hits["hits"]] == ["1"]


def test_opensearch_knn_lucene(engines: Engines) -> None:
    if engines.env.get("CHATPLANE_OPENSEARCH_KNN") != "1":
        pytest.skip("k-NN plugin not loaded (engines.py up --no-knn or install failed)")
    client = _opensearch(engines)
    client.indices.create(
        index="vectors",
        body={
            "settings": {"index": {"knn": True, "number_of_shards": 1, "number_of_replicas": 0}},
            "mappings": {
                "properties": {
                    "embedding": {
                        "type": "knn_vector",
                        "dimension": 4,
                        # engine MUST be lucene: faiss/nmslib need native libs that the Maven
                        # Central plugin zip lacks (the node dies on first faiss write).
                        "method": {"name": "hnsw", "engine": "lucene", "space_type": "cosinesimil"},
                    },
                    "doc": {"type": "keyword"},
                }
            },
        },
    )
    docs = {"a": [1.0, 0.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0, 0.0], "c": [0.7, 0.7, 0.0, 0.0]}
    for name, vec in docs.items():
        client.index(index="vectors", id=name, body={"embedding": vec, "doc": name})
    client.indices.refresh(index="vectors")
    res = client.search(
        index="vectors",
        body={
            "size": 2,
            "query": {"knn": {"embedding": {"vector": [0.9, 0.1, 0.0, 0.0], "k": 2}}},
        },
    )
    assert [h["_id"] for h in res["hits"]["hits"]] == ["a", "c"]


def test_postgres_crash_restart_keeps_data(engines: Engines) -> None:
    before = engines.state["postgres"]
    stop = engines.cli("stop", "postgres", "--keep-data", "--kill")
    assert stop.returncode == 0, stop.stderr
    assert engines.cli("status").returncode == 1  # postgres is down
    start = engines.cli("start", "postgres")
    assert start.returncode == 0, start.stderr
    after = engines.reload()
    assert after.env["CHATPLANE_POSTGRES_DSN"] == engines.env["CHATPLANE_POSTGRES_DSN"]
    assert after.state["postgres"]["pid"] != before["pid"]
    assert psql(after, "SELECT body FROM smoke WHERE id = 1") == "persisted"


def test_kafka_crash_restart_keeps_data(engines: Engines) -> None:
    stop = engines.cli("stop", "kafka", "--keep-data", "--kill")
    assert stop.returncode == 0, stop.stderr
    start = engines.cli("start", "kafka")
    assert start.returncode == 0, start.stderr
    after = engines.reload()
    assert after.env["CHATPLANE_KAFKA_BOOTSTRAP"] == engines.env["CHATPLANE_KAFKA_BOOTSTRAP"]
    assert _consume_one(after.env["CHATPLANE_KAFKA_BOOTSTRAP"], KAFKA_TOPIC) == KAFKA_VALUE


def test_clean_stop_and_down_remove_data(tmp_path: Path) -> None:
    """`stop` without --keep-data removes the throwaway dir; `down` does it for the rest. On
    engines of its own: the session's engines serve the tests that follow."""
    own = Engines(state_dir=tmp_path, env={}, state={})
    up = own.cli("up", "--only", "postgres")
    assert up.returncode == 0, up.stderr
    try:
        work = Path(str(own.reload().state["postgres"]["work_dir"]))
        assert work.is_dir()
        stop = own.cli("stop", "postgres")
        assert stop.returncode == 0, stop.stderr
        assert not work.exists()
        state_file = tmp_path / "engines.json"  # gone with the last engine
        assert not state_file.exists() or "postgres" not in own.reload().state
    finally:
        assert own.cli("down").returncode == 0
