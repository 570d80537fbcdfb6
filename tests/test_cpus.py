"""The CPU facts the kernels' choice and the benchmark labels rest on."""

from __future__ import annotations

from gotocr_fast.cpus import cpu_flags, cpu_info

# two processors of one machine, trimmed: only the first block is read
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14 96-Core Processor
flags\t\t: fpu sse avx2 avx512f avx512_bf16
bugs\t\t: sysret_ss_attrs

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: another name
flags\t\t: fpu amx_bf16
"""


def test_first_processor_block_is_parsed(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    info = cpu_info(path)
    assert info["model name"] == "AMD EPYC 9B14 96-Core Processor"
    assert info["vendor_id"] == "AuthenticAMD"
    assert cpu_flags(path) == {"fpu", "sse", "avx2", "avx512f", "avx512_bf16"}


def test_missing_file_means_no_facts(tmp_path):
    assert cpu_info(tmp_path / "absent") == {}
    assert cpu_flags(tmp_path / "absent") == frozenset()
