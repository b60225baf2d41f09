"""kafka-python's record-batch CRCs computed in C (google-crc32c): the same sums, and a
corrupted batch still caught (#19)."""

from __future__ import annotations

import pytest

google_crc32c = pytest.importorskip("google_crc32c")

from kafka.record import default_records  # noqa: E402
from kafka.record._crc32c import crc as pure_python_crc  # noqa: E402

from invoker.messaging import use_c_crc32c  # noqa: E402


def _batch() -> bytearray:
    builder = default_records.DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=False, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=1 << 20)
    for i in range(20):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=None, value=b'{"activationId":"%d"}' % i, headers=[])
    return builder.build()


def test_c_sum_is_installed_and_equals_the_pure_python_one() -> None:
    assert use_c_crc32c()
    assert default_records.calc_crc32c.__module__ == "invoker.messaging"
    data = memoryview(bytearray(range(256)) * 3)[5:]
    assert default_records.calc_crc32c(data) == pure_python_crc(data)


def test_batches_built_with_it_validate_and_a_flipped_byte_is_caught() -> None:
    use_c_crc32c()
    raw = _batch()
    assert default_records.DefaultRecordBatch(bytes(raw)).validate_crc()
    raw[-3] ^= 0x01  # one bit in the last record's value
    assert not default_records.DefaultRecordBatch(bytes(raw)).validate_crc()
