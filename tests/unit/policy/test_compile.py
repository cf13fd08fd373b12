"""The compiled tables, byte for byte: what the kernel maps will hold."""

from __future__ import annotations

import ctypes
import struct
import time

from agent.kernel import abi
from agent.policy.compile import (
    MAPS,
    MASK_BYTES,
    N_SLOTS,
    OPS,
    Slot,
    addr_lookup,
    compile_policy_set,
    id_key,
    lpm_key,
    pack_masks,
    port_entries,
    precedence_class,
    unpack_masks,
)
from agent.policy.source import load_policy_set

from .conftest import Write, compiled_from, judge

OPEN, CONNECT = OPS["open"], OPS["connect"]


def test_op_codes_are_the_probe_abi_ones() -> None:
    assert {name: int(abi.Op[name.upper()]) for name in OPS} == OPS


def test_sizes_match_the_ctypes_mirror_of_the_probe_header() -> None:
    """agent/kernel/abi.py mirrors probes/sealtrail.h; the compiler must write the same shapes."""
    assert ctypes.sizeof(abi.Mask) == MASK_BYTES and N_SLOTS == abi.SLOTS
    assert MAPS["rules"].value_size == ctypes.sizeof(abi.PolRule)
    assert MAPS["masks"].value_size == ctypes.sizeof(abi.PolMasks)
    assert MAPS["paths"].key_size == ctypes.sizeof(abi.LpmPathKey)
    assert MAPS["addrs"].key_size == ctypes.sizeof(abi.LpmAddrKey)
    assert MAPS["ports"].key_size == ctypes.sizeof(abi.LpmPortKey)
    assert MAPS["exe"].value_size == ctypes.sizeof(abi.PolExe)
    assert MAPS["uid"].key_size == ctypes.sizeof(abi.PolIdKey)
    assert MAPS["uid"].value_size == ctypes.sizeof(abi.PolId)


def test_rule_entry_bytes(write: Write) -> None:
    compiled = compiled_from(
        write(
            """\
            name = "p"
            mode = "monitor"
            [[rules]]
            id = "a"
            operation = "unlink"
            targets.paths = ["/x"]
            action = "deny"
            fallback = "kill"
            [[rules]]
            id = "b"
            operation = "open"
            targets.paths = ["/etc/shadow", "/etc/sudoers.d/", "/etc/sudoers*"]
            action = "kill"
            """
        )
    )
    rules = compiled.maps["rules"]
    # key op*1024+index; value rule_no u32, policy_no u16, action u8 (2 deny, 3 kill), flags u8
    assert rules[struct.pack("<I", OPS["unlink"] * 1024)] == bytes.fromhex("0000000000000203")
    assert rules[struct.pack("<I", OPEN * 1024)] == bytes.fromhex("0100000000000301")
    unlink = abi.PolRule.from_buffer_copy(rules[abi.u32_key(OPS["unlink"] * abi.RULES_PER_OP)])
    assert (unlink.action, unlink.flags) == (
        abi.PolAction.DENY,
        abi.RULE_MONITOR | abi.RULE_FALLBACK_KILL,
    )
    paths = compiled.maps["paths"]
    bit0 = (1).to_bytes(MASK_BYTES, "little")
    exact = struct.pack("<I", 8 * 13) + b"\x04/etc/shadow\0".ljust(256, b"\0")
    directory = struct.pack("<I", 8 * 16) + b"\x04/etc/sudoers.d/".ljust(256, b"\0")
    star = struct.pack("<I", 8 * 13) + b"\x04/etc/sudoers".ljust(256, b"\0")
    assert paths[exact] == paths[directory] == paths[star] == bit0
    assert len(paths) == 4  # plus the unlink rule's /x
    masks = compiled.maps["masks"][struct.pack("<I", OPEN)]
    assert len(masks) == N_SLOTS * MASK_BYTES
    slots = unpack_masks(masks)
    every = {
        Slot.EXE_ANY,
        Slot.UID_ANY,
        Slot.GID_ANY,
        Slot.CGROUP_ANY,
        Slot.ADDR_ANY,
        Slot.PORT_ANY,
        Slot.PROTO_ANY,
        Slot.ACCESS_READ,
        Slot.ACCESS_WRITE,
        Slot.ACCESS_CREATE,
        Slot.ACCESS_TRUNCATE,
    }
    assert {Slot(i) for i, mask in enumerate(slots) if mask} == every


def test_network_key_bytes(write: Write) -> None:
    compiled = compiled_from(
        write(
            """\
            name = "p"
            mode = "enforce"
            [[rules]]
            id = "a"
            operation = "connect"
            targets.addresses = ["169.254.169.254", "fd00::/8"]
            targets.ports = ["1-1023"]
            targets.protocol = "tcp"
            action = "deny"
            subjects = { uid = [1000], except = { gid = [7] } }
            """
        )
    )
    addrs = compiled.maps["addrs"]
    v4 = (
        struct.pack("<I", 32 + 128)
        + bytes([CONNECT, 0, 0, 0])
        + bytes(10)
        + b"\xff\xff"
        + bytes([169, 254, 169, 254])
    )
    v6 = struct.pack("<I", 32 + 8) + bytes([CONNECT, 0, 0, 0, 0xFD]) + bytes(15)
    assert set(addrs) == {v4, v6}
    ports = compiled.maps["ports"]
    # 1-1023 = 1, 2-3, 4-7, ..., 512-1023: ten aligned blocks
    assert len(ports) == 10
    assert struct.pack("<I", 16 + 7) + bytes([CONNECT, 0, 0x02, 0x00]) in ports  # 512/7 bits
    assert struct.pack("<I", 16 + 16) + bytes([CONNECT, 0, 0x00, 0x01]) in ports  # port 1
    uid = compiled.maps["uid"][struct.pack("<II", CONNECT, 1000)]
    assert unpack_masks(uid) == (1, 0)
    gid = compiled.maps["gid"][struct.pack("<II", CONNECT, 7)]
    assert unpack_masks(gid) == (0, 1)
    slots = unpack_masks(compiled.maps["masks"][struct.pack("<I", CONNECT)])
    assert slots[Slot.HAS_EXCEPT] == slots[Slot.PROTO_TCP] == slots[Slot.X_UID_ANY] == 1
    assert slots[Slot.UID_ANY] == slots[Slot.X_GID_ANY] == slots[Slot.PROTO_ANY] == 0


def test_port_blocks_cover_exactly() -> None:
    for low, high in [(0, 65535), (1, 1023), (22, 22), (8000, 8999), (65535, 65535)]:
        covered: set[int] = set()
        for prefixlen, data in port_entries(1, f"{low}-{high}"):
            bits = prefixlen - 16
            start = int.from_bytes(data[2:4], "big")
            covered |= set(range(start, start + (1 << (16 - bits))))
        assert covered == set(range(low, high + 1))


def test_lpm_key_zeroes_bits_past_prefixlen() -> None:
    assert lpm_key(12, b"\xff\xff\xff", 4) == struct.pack("<I", 12) + b"\xff\xf0\0\0"
    assert addr_lookup(CONNECT, "::ffff:169.254.169.254") == addr_lookup(CONNECT, "169.254.169.254")


def test_prefix_closure(write: Write) -> None:
    """Each entry holds the masks of every shorter entry covering it."""
    compiled = compiled_from(
        write(
            """\
            name = "p"
            mode = "enforce"
            [[rules]]
            id = "root"
            operation = "open"
            targets.paths = ["/"]
            action = "audit"
            [[rules]]
            id = "etc"
            operation = "open"
            targets.paths = ["/etc/"]
            action = "deny"
            [[rules]]
            id = "shadow"
            operation = "open"
            targets.paths = ["/etc/shadow"]
            action = "kill"
            """
        )
    )
    by_id = {r.rule_id: 1 << r.index for r in compiled.rules}
    values = {
        key[5 : 5 + key[4:].index(b"\0", 1) - 1]: unpack_masks(v)[0]
        for key, v in compiled.maps["paths"].items()
    }
    assert values == {
        b"/": by_id["root"],
        b"/etc/": by_id["root"] | by_id["etc"],
        b"/etc/shadow": by_id["root"] | by_id["etc"] | by_id["shadow"],
    }
    assert judge(compiled, "open", path="/etc/shadow", access=("read",)) == ("kill", "shadow")
    assert judge(compiled, "open", path="/etc/passwd", access=("read",)) == ("deny", "etc")
    assert judge(compiled, "open", path="/usr/x", access=("read",)) == ("audit", "root")


def test_precedence_is_index_order() -> None:
    ranks = [
        precedence_class(mode, action)
        for mode in ("enforce", "monitor")
        for action in ("allow", "kill", "deny", "audit")
    ]
    assert ranks == [0, 1, 2, 6, 3, 4, 5, 6]


def test_precedence_allow_then_kill_deny_audit_ties_by_file_order(write: Write) -> None:
    body = 'operation = "exec"\ntargets.paths = ["/usr/bin/"]\n'
    compiled = compiled_from(
        write(
            'name = "p"\nmode = "enforce"\n'
            + "".join(
                f'[[rules]]\nid = "{rid}"\n{body}action = "{act}"\n'
                for rid, act in [
                    ("au", "audit"),
                    ("d1", "deny"),
                    ("k", "kill"),
                    ("d2", "deny"),
                    ("al", "allow"),
                ]
            )
        )
    )
    assert [r.rule_id for r in sorted(compiled.rules, key=lambda r: r.index)] == [
        "al",
        "k",
        "d1",
        "d2",
        "au",
    ]


def test_digest_ignores_key_order_whitespace_and_comments(write: Write) -> None:
    one = write(
        'name = "p"\nmode = "enforce"\n[[rules]]\nid = "r"\noperation = "open"\n'
        'targets.paths = ["/a"]\naction = "deny"\n',
        "one.toml",
    )
    two = write(
        '# same policy, other layout\nmode="enforce"\n  name   =  "p"\n\n[[rules]]\n'
        'action = "deny"\nid = "r"\noperation = "open"\n[rules.targets]\npaths = [ "/a", ]\n',
        "two.toml",
    )
    digests = [load_policy_set([p])[0].digest for p in (one, two)]
    assert digests[0] == digests[1]
    assert digests[0].startswith("sha256:") and len(digests[0]) == 7 + 64
    changed = write(one.read_text().replace('"/a"', '"/b"'), "three.toml")
    assert load_policy_set([changed])[0].digest != digests[0]


def test_thousand_rules_compile_fast(write: Write) -> None:
    ops = ["exec", "open", "connect", "bind", "unlink"]
    parts = ['name = "big"\nmode = "enforce"\n']
    for i in range(1000):
        op = ops[i % len(ops)]
        if op in ("connect", "bind"):
            net = f"10.{i // 256}.{i % 256}.0/24"
            target = f'targets = {{ addresses = ["{net}"], ports = ["{1000 + i}-{2000 + i}"] }}'
        else:
            target = f'targets.paths = ["/srv/app{i}/", "/opt/tool{i}/bin/run"]'
        parts.append(
            f'[[rules]]\nid = "r{i}"\noperation = "{op}"\n{target}\n'
            f'action = "{["deny", "kill", "audit"][i % 3]}"\n'
            f'subjects = {{ exe = ["/usr/bin/app{i % 50}"], uid = [{i % 7}] }}\n'
        )
    path = write("".join(parts))
    policy_set, findings = load_policy_set([path])
    assert not findings
    start = time.perf_counter()
    compiled = compile_policy_set(policy_set)
    elapsed = time.perf_counter() - start
    print(f"compiled 1000 rules in {elapsed * 1000:.0f} ms")
    assert len(compiled.rules) == 1000
    assert elapsed < 5.0
    assert judge(
        compiled, "open", exe="/usr/bin/app1", uid=1, path="/srv/app1/x", access=("read",)
    ) == ("kill", "r1")


def test_keys_and_values_are_the_abi_structs() -> None:
    """Bytes built by hand on the evaluator's hot path equal the checked mirror's."""
    key = abi.LpmPathKey(8 * 3)
    key.data[:3] = b"\x04/e"
    assert lpm_key(8 * 3, b"\x04/etc", 256) == bytes(key)
    port = abi.LpmPortKey(28)
    port.data[:] = bytes([CONNECT, 0, 0x01, 0xF0])
    assert lpm_key(28, bytes([CONNECT, 0, 0x01, 0xFF]), 4) == bytes(port)
    mask = abi.Mask()
    mask.w[0], mask.w[15] = 1, 1 << 63
    assert pack_masks(1 | 1 << 1023) == bytes(mask)
    assert id_key(CONNECT, 1000) == bytes(abi.PolIdKey(CONNECT, 1000))
