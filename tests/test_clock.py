"""Virtual clock (docs/methods.md §6): a round is as long as its slowest device (§3 round time)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedquad.cost.fleet import Device
from fedquad.cost.model import download_bytes, round_time, upload_bytes
from fedquad.device_config import DeviceConfig
from fedquad.errors import FedquadError
from fedquad.server.clock import RoundTiming, VirtualClock, time_round
from helpers import tiny_profile as tiny


def device(i: int, slowdown: float, uplink: float, downlink: float = 1000.0) -> Device:
    return Device(i, "t", slowdown, 10**6, uplink=uplink, downlink=downlink)


CONFIGS = {
    2: DeviceConfig(depth=1),
    5: DeviceConfig(depth=4, quantized=2),
    9: DeviceConfig(depth=2, quantized=1, bits=4),
}
DEVICES = {
    2: device(2, 1.0, 100.0),
    5: device(5, 3.0, 50.0),
    9: device(9, 1.5, 10.0),
    11: device(11, 9.0, 1.0),
}


def test_round_lasts_as_long_as_the_straggler():
    p = tiny()
    timing = time_round(p, CONFIGS, DEVICES, local_steps=3)
    expected = {i: round_time(p, CONFIGS[i], DEVICES[i], 3) for i in CONFIGS}
    assert set(timing.devices) == set(CONFIGS)  # device 11 was not configured: not timed
    assert timing.seconds == max(t.total for t in expected.values())
    assert timing.devices[timing.straggler].total == timing.seconds
    for i, t in timing.devices.items():
        assert t.device == i
        assert (t.compute, t.download, t.upload, t.total) == (
            expected[i].compute,
            expected[i].download,
            expected[i].upload,
            expected[i].total,
        )
        assert t.waiting == timing.seconds - t.total >= 0
    assert timing.devices[timing.straggler].waiting == 0.0


def test_bytes_are_the_cost_models():
    p = tiny()
    timing = time_round(p, CONFIGS, DEVICES, local_steps=1)
    for i, t in timing.devices.items():
        assert t.bytes_down == download_bytes(p) == 4 * (100 + 5)
        assert t.bytes_up == upload_bytes(p, CONFIGS[i].depth)
    assert timing.devices[2].bytes_up == 4 * (40 + 5)


def test_straggler_is_whoever_is_slowest():
    p = tiny()
    slow_link = time_round(
        p,
        {1: DeviceConfig(2), 2: DeviceConfig(2)},
        {1: device(1, 1.0, 1.0), 2: device(2, 5.0, 1000.0)},
        1,
    )
    assert slow_link.straggler == 1  # 300 bytes at 1 B/s outweighs a 5x slower step
    tie = time_round(
        p,
        {4: DeviceConfig(2), 3: DeviceConfig(2)},
        {3: device(3, 1.0, 10.0), 4: device(4, 1.0, 10.0)},
        1,
    )
    assert tie.straggler == 3 and tie.devices[4].waiting == 0.0


def test_empty_round_takes_no_time():
    timing = time_round(tiny(), {}, DEVICES, local_steps=2)
    assert timing == RoundTiming(seconds=0.0, devices={}, straggler=None)
    clock = VirtualClock(now=12.5)
    assert clock.advance(timing) == 12.5


def test_clock_accumulates_and_round_trips():
    p = tiny()
    clock = VirtualClock()
    assert clock.now == 0.0
    rounds = [time_round(p, CONFIGS, DEVICES, steps) for steps in (1, 2, 5)]
    total = 0.0
    for timing in rounds:
        total += timing.seconds
        assert clock.advance(timing) == total == clock.now
    back = VirtualClock.from_dict(json.loads(json.dumps(clock.to_dict())))
    assert back == clock and back.now == total


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: time_round(tiny(), CONFIGS, DEVICES, 0), r"local_steps = 0 .*>= 1"),
        (lambda: time_round(tiny(), CONFIGS, {2: DEVICES[2]}, 1), r"device 5 has a config"),
        (lambda: time_round(tiny(), {2: DeviceConfig(5)}, DEVICES, 1), r"depth 5"),
        (lambda: VirtualClock(now=-1.0), r"now = -1.0 .*>= 0"),
        (lambda: VirtualClock.from_dict({"now": "x"}), r"now = 'x'"),
        (lambda: VirtualClock.from_dict({"time": 1.0}), r"unknown field 'time'"),
    ],
)
def test_bad_input_is_one_line(call, match):
    with pytest.raises(FedquadError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_clock_module_is_torch_free():
    code = (
        "import sys, fedquad.server.clock, fedquad.server.capacity, fedquad.cost; "
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
