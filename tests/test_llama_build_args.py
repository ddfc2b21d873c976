"""``.ci/llama-cmake-args``: the CMAKE_ARGS the README's install commands and CI build llama.cpp with."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORTABLE = ["-DGGML_NATIVE=OFF", "-DLLAVA_BUILD=OFF"]


def cmake_args(tmp_path, flags: str | None) -> list[str]:
    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\nbugs\t\t: spectre_v1\n")
    out = subprocess.run(["sh", str(ROOT / ".ci" / "llama-cmake-args")], env={"CPUINFO": str(cpuinfo)},
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_a_cpu_with_avx512_gets_the_extensions_it_has_and_never_native(tmp_path):
    sapphire = "fpu sse4_2 avx avx2 fma f16c avx512f avx512dq avx512cd avx512bw avx512vl avx512vbmi " \
               "avx512_vnni avx512_bf16 avx_vnni amx_tile amx_int8"
    assert cmake_args(tmp_path, sapphire) == PORTABLE + [
        "-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_VBMI=ON", "-DGGML_AVX512_BF16=ON",
        "-DGGML_AVX_VNNI=ON"]
    cascade = "fpu avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni"
    assert cmake_args(tmp_path, cascade) == PORTABLE + ["-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON"]


def test_a_cpu_without_avx512_or_an_unknown_one_gets_the_portable_build(tmp_path):
    assert cmake_args(tmp_path, "fpu sse4_2 avx avx2 fma f16c") == PORTABLE
    # avx512f alone (no BW/VL...) is not enough for llama.cpp's AVX-512 build
    assert cmake_args(tmp_path, "fpu avx2 avx512f avx512_vnni") == PORTABLE
    assert cmake_args(tmp_path, None) == PORTABLE  # no /proc/cpuinfo (not Linux)
