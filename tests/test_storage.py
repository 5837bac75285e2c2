"""tune_hw.storage against a local disk and a real S3 server (moto's, on 127.0.0.1) through
pyarrow's real S3 filesystem: paths, atomic writes, the probe before Ray starts, and the
results files, trial states and run: weights on a bucket."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import pandas as pd
import pytest
import torch

from tune_hw import pretrained, report, results, search, storage
from tune_hw.errors import UserError
from tune_hw.ranking import Ranking
from tune_hw.ray_trial import TrialStates
from tune_hw.storage import ObjectPath, location


def test_a_location_is_a_path_or_an_object_path_that_keeps_its_query():
    assert location("runs/x") == Path("runs/x")
    assert location("file:///tmp/r") == Path("/tmp/r")
    uri = location("s3://bkt/runs/?endpoint_override=127.0.0.1:9&scheme=http")
    assert isinstance(uri, ObjectPath)
    run = uri / "lr_batch" / "r1"
    assert str(run) == "s3://bkt/runs/lr_batch/r1?endpoint_override=127.0.0.1:9&scheme=http"
    assert (run.name, str(run.parent)) == ("r1", str(uri / "lr_batch"))
    assert [p.key for p in run.parents] == ["bkt/runs/lr_batch", "bkt/runs", "bkt"]


def fail_half_way(tmp: str) -> None:
    Path(tmp).write_bytes(b"half")
    raise RuntimeError("the writer failed")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary(where, tmp_path, request):
    base = location(request.getfixturevalue("s3_bucket") + "/p") if where == "s3" \
        else tmp_path
    target = base / "trials.parquet"
    old = pd.DataFrame({"trial_id": ["a", "b"]})
    storage.atomic_write(target, lambda tmp: old.to_parquet(tmp))
    with pytest.raises(RuntimeError, match="failed"):
        storage.atomic_write(target, fail_half_way)
    assert pd.read_parquet(io.BytesIO(target.read_bytes())).equals(old)
    assert [p.name for p in base.iterdir()] == ["trials.parquet"]  # no temporary left


def test_results_and_trial_states_live_on_a_bucket(s3_bucket):
    run_dir = location(s3_bucket) / "runs" / "s" / "r1"
    study = {"name": "s", "search": {"metric": "val_acc", "mode": "max"}}
    record = results.TrialRecord("a", {"train.epochs": 2, "train.lr": 0.1}, [
        {"epoch": e, "val_acc": 0.5 + e / 10, "epoch_s": 1.0} for e in (1, 2)])
    results.write_run(run_dir, [record], study)
    run = results.load_run(str(run_dir))  # a URI string, as the CLIs get it
    assert run.trials.best_epoch.tolist() == [2] and run.epochs.epoch.tolist() == [1, 2]
    assert run.study == study
    with pytest.raises(Exception, match="refusing to replace"):
        results.write_run(run_dir, [], study)  # never replaced by fewer trials

    states = TrialStates(run_dir / "trial_a", Ranking.of(study))
    for epoch in (1, 2):  # rows are rewritten whole (no append on object storage)
        states.append_row({"epoch": epoch})
    states.keep_latest({"epoch": 2}, {"model": {"w": torch.ones(2)}})
    assert (run_dir / "trial_a" / "rows.jsonl").read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    again = TrialStates(run_dir / "trial_a", Ranking.of(study))  # a retry reads it back
    assert torch.equal(again.latest()["model"]["w"], torch.ones(2))
    again.append_row({"epoch": 3})
    assert (run_dir / "trial_a" / "rows.jsonl").read_text().count("\n") == 3


def test_run_weights_come_from_a_bucket(s3_bucket, monkeypatch):
    run_dir = location(s3_bucket) / "runs" / "pretrain" / "r1"
    trials = pd.DataFrame({"trial_id": ["a", "b"], "status": ["completed"] * 2,
                           "best_val_acc": [0.7, 0.9]})
    storage.atomic_write(run_dir / "trials.parquet", lambda tmp: trials.to_parquet(tmp))
    for i, trial in enumerate("ab"):
        state = {"model": {"w": torch.full((1,), float(i))}, "epoch": 1}
        storage.atomic_write(run_dir / f"trial_{trial}" / "best.pt",
                             lambda tmp, s=state: torch.save(s, tmp))
    monkeypatch.setenv("TUNE_HW_STORAGE", f"{s3_bucket}/runs")
    monkeypatch.delenv("TUNE_ORIG_WORKING_DIR", raising=False)
    for ref in ("run:pretrain/r1", f"run:{run_dir}"):  # relative to the storage root, a URI
        assert pretrained.pretrained_state(ref)["w"].item() == 1.0  # b's: the best trial


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unusable_bucket_is_one_line_before_ray_starts(s3_bucket, monkeypatch, capsys):
    import ray

    dead, live = f"http://127.0.0.1:{free_port()}", os.environ["AWS_ENDPOINT_URL"]
    cases = [
        (f"{s3_bucket}-nosuch/runs", None, "does not exist at http://127.0.0.1:"),
        ("s3://", None, "no bucket named"),
        (f"{s3_bucket}/runs", dead, f"cannot reach {dead}"),
    ]
    for path, endpoint, message in cases:
        if endpoint:
            monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        assert search.main(["lr_batch", "--quick", "--storage-path", path]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --storage-path "), lines
        assert message in lines[0]
        assert not ray.is_initialized()  # refused before Ray starts
    assert report.main([f"{s3_bucket}/runs/lr_batch/r1"]) == 2  # the report reads alike
    assert capsys.readouterr().err.startswith(f"error: run {s3_bucket}/runs/lr_batch/r1: "
                                              f"cannot reach {dead}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", live)
    assert list(location(s3_bucket).iterdir()) == []  # nothing written, no probe left
    assert report.main([f"{s3_bucket}/runs/lr_batch/r1"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_refused_or_missing_credentials_are_one_line(monkeypatch):
    import boto3
    import pyarrow.fs as pafs
    from conftest import S3_ENV, start_moto, stop_moto

    # moto checks credentials once its first requests (the IAM set-up below) are spent
    proc, url = start_moto(INITIAL_NO_AUTH_ACTION_COUNT="3")
    try:
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="x", aws_secret_access_key="x")
        iam.create_user(UserName="u")
        key = iam.create_access_key(UserName="u")["AccessKey"]
        iam.put_user_policy(UserName="u", PolicyName="s3", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": '
            '[{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
        pafs.S3FileSystem(endpoint_override=url, allow_bucket_creation=True,
                          access_key=key["AccessKeyId"], secret_key=key["SecretAccessKey"],
                          region="us-east-1").create_dir("bkt")
        for name, value in {**S3_ENV, "AWS_ENDPOINT_URL": url,
                            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}.items():
            monkeypatch.setenv(name, value)
        storage.probe(location("s3://bkt/runs"))  # the user's own keys: fine
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        with pytest.raises(UserError, match=r"^--storage-path s3://bkt/runs: access denied: "
                                            "check the credentials"):
            storage.probe(location("s3://bkt/runs"))
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        with pytest.raises(UserError, match="access denied: check the credentials"):
            storage.probe(location("s3://bkt/runs"))
    finally:
        stop_moto(proc)


def test_a_resumed_run_on_a_bucket_continues_the_log_the_bucket_holds(s3_bucket, monkeypatch,
                                                                     tmp_path):
    monkeypatch.setattr(search.tempfile, "gettempdir", lambda: str(tmp_path))  # another machine
    run_dir = location(f"{s3_bucket}/runs/lr_batch/r1")
    earlier = b"session 1: Ray's lines\n"
    storage.atomic_write(run_dir / "driver.log", lambda tmp: Path(tmp).write_bytes(earlier))
    local = search.local_log_dir(run_dir) / "driver.log"
    assert not local.exists()
    search.download_log(run_dir)
    assert local.read_bytes() == earlier  # the new session appends to it, then uploads it
    local.write_bytes(earlier + b"session 2, killed before it uploaded\n")
    search.download_log(run_dir)  # this machine's copy holds more: it is kept
    assert local.read_bytes().endswith(b"killed before it uploaded\n")
    search.upload_log(run_dir)
    assert (run_dir / "driver.log").read_bytes() == local.read_bytes()
