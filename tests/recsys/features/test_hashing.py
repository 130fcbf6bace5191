import os
import subprocess
import sys

import numpy as np
import torch

from recsys.features.hashing import (
    hash_values,
    mix64,
    mix64_torch,
    salt_multiplier,
    to_int64,
    umod_torch,
)

VALUES = ["u1", "i42", "", "naïve", "x" * 100]


def test_hashes_are_identical_in_a_process_with_another_hash_seed():
    code = (
        "from recsys.features.hashing import hash_values, mix64;"
        f"print(list(mix64(hash_values({VALUES!r}, 3), 9)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    theirs = [
        int(x)
        for x in out.stdout.strip()
        .strip("[]")
        .replace("np.uint64(", "")
        .replace(")", "")
        .split(",")
    ]
    assert theirs == [int(x) for x in mix64(hash_values(VALUES, 3), 9)]


def test_ints_strings_and_none_hash_through_their_string_form():
    assert (hash_values([7, None, "a"]) == hash_values(["7", "", "a"])).all()
    assert (hash_values(np.array(["7", "a"])) == hash_values(["7", "a"])).all()


def test_a_different_salt_gives_different_hashes():
    a, b = hash_values(VALUES, 0), hash_values(VALUES, 1)
    assert (a != b).all()


def _chi_square(rows: np.ndarray, buckets: int) -> float:
    counts = np.bincount(rows, minlength=buckets)
    expected = len(rows) / buckets
    return float(((counts - expected) ** 2 / expected).sum())


def test_sequential_ids_spread_evenly_over_rows_for_every_probe_salt():
    raw = hash_values(np.arange(200_000).astype(str))
    buckets = 1000
    # chi-square with 999 dof: mean 999, sd ~44.7; 1200 is ~4.5 sd.
    for salt in (0, 1, 2, 2**63 + 5):
        rows = (mix64(raw, salt) % np.uint64(buckets)).astype(np.int64)
        assert _chi_square(rows, buckets) < 1200, salt
    # mix64 alone must also spread raw sequential integers (no string hashing before it).
    rows = (mix64(np.arange(200_000, dtype=np.uint64), 7) % np.uint64(buckets)).astype(np.int64)
    assert _chi_square(rows, buckets) < 1200


def test_two_probe_salts_put_the_same_value_on_independent_rows():
    raw = hash_values(np.arange(100_000).astype(str))
    buckets = 100
    a = (mix64(raw, 11) % np.uint64(buckets)).astype(np.int64)
    b = (mix64(raw, 12) % np.uint64(buckets)).astype(np.int64)
    same = float((a == b).mean())
    assert abs(same - 1 / buckets) < 0.003  # independent probes agree ~1/buckets of the time
    joint = np.bincount(a * buckets + b, minlength=buckets * buckets)
    expected = len(raw) / buckets**2
    chi = float(((joint - expected) ** 2 / expected).sum())
    assert chi < 9999 + 5 * 141  # 9999 dof


def test_torch_mix_and_unsigned_mod_match_numpy_bit_for_bit():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 2**64, 50_000, dtype=np.uint64, endpoint=False)
    raw[:4] = [0, 1, 2**63, 2**64 - 1]
    for salt, rows in ((0, 1000), (2**64 - 1, 7), (123456789, 2**40 + 3), (5, 1)):
        ref = (mix64(raw, salt) % np.uint64(rows)).astype(np.int64)
        got = umod_torch(
            mix64_torch(torch.from_numpy(to_int64(raw).copy()), salt_multiplier(salt)),
            rows,
            (1 << 64) % rows,
        )
        np.testing.assert_array_equal(got.numpy(), ref)
