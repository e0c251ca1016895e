"""Density-matrix simulation of 1H MRS basis spectra (PRESS with ideal pulses).

Physics
-------
Each metabolite (``data/spin_systems.yaml``) is a set of independent spin groups. For a group
of N protons the Hilbert-space Hamiltonian (rad/s) in the frame rotating at the receiver
frequency is

    H = 2*pi * sum_i nu_i Iz_i + 2*pi * sum_{i<j} J_ij (I_i . I_j),
    nu_i = (delta_i - centre_ppm) * f0_MHz   [Hz]

i.e. full strong coupling. Passive heteronuclei (31P, 14N) are never pulsed, are weakly
coupled (2*pi*J Iz S_z) and commute with everything, so their Zeeman state m is a constant of
the motion: the group is simulated once per m with proton offsets nu_i + m*J_iX and the FIDs
are averaged with equal weights 1/(2S+1) (high-temperature populations).

Sequences (instantaneous, ideal, non-selective pulses; no relaxation, no line broadening):

- ``press``:  90x - TE1/2 - 180y - (TE1/2 + TE2/2) - 180y - TE2/2 - acquire
- ``steam``:  90x - TE/2 - 90x - TM - 90x - TE/2 - acquire   (TE = te1_ms + te2_ms,
  TM = ``tm_ms``); stimulated echo scaled by 2 so singlets keep their proton count.
- ``pulse_acquire``: 90x - acquire.

Coherence-pathway selection (what the crusher gradients do) is applied as direct
coherence-order filtering of the density matrix: since H commutes with the total Fz, the
eigenbasis is built block-wise per total magnetic quantum number M, and an element rho_ab
has the well-defined order p = M_a - M_b. PRESS keeps p = -1 after the excitation, p = +1
after the first and p = -1 after the second refocusing pulse (crusher pairs flanking each
180 refocus only p -> -p); STEAM keeps p = +1 / 0 / -1 in its three intervals. The detected
coherence is p = -1 (signal = Tr(rho F+)). With ideal hard 180s the PRESS filter only removes
terms that would not be detected anyway; it is exact and cheap, and it is what makes the
STEAM pathway (and any future non-ideal pulse) correct.

Acquisition: with H = V diag(E) V^T (real symmetric, diagonalised once per group and state),
the FID is a sum over single-quantum transitions

    fid[n] = c * sum_k a_k exp(+i w_k n dwell),  w_k = E_b - E_a,  a_k = rho'_ab (F+)'_ba

evaluated with numpy (no per-point loops). ``c`` normalises the sequence so that an on-
resonance single spin gives exactly 1 at t = 0: every singlet has fid[0] = its proton count
times its scale at any TE, coupled spins lose/modulate signal as the physics dictates.

FID / frequency convention (NIfTI-MRS, also FSL-MRS's internal one): a line at delta ppm
appears in ``np.fft.fftshift(np.fft.fft(fid))`` at +nu = (delta - centre_ppm) * f0 Hz on the
ascending axis ``np.fft.fftshift(np.fft.fftfreq(n, dwell))``, i.e. fid ~ exp(+2*pi*i*nu*t);
``ppm_axis`` returns centre_ppm + that axis / f0 (ppm increases with the index).

FSL-MRS basis JSON
------------------
Verified against the FSL-MRS source (wtclarke/fsl_mrs, ``fsl_mrs/utils/mrs_io/fsl_io.py``:
``readFSLBasis``, ``readFSLBasisFiles``, ``write_fsl_basis_file``; ``fsl_mrs/utils/mrs_io/
main.py``: ``read_basis``; ``fsl_mrs/core/basis.py``): one JSON file per metabolite with a
``basis`` object holding ``basis_re``, ``basis_im`` (lists), ``basis_dwell`` (s),
``basis_centre`` (spectrometer frequency in MHz; read as centralFrequency = value * 1e6),
``basis_width`` (linewidth, Hz) and ``basis_name``. ``readFSLBasisFiles`` CONJUGATES what it
reads (``np.array(basis).conj().T``) and ``write_fsl_basis_file`` writes ``basis.conj()``,
while NIfTI-MRS data are used unconjugated. The file therefore stores the complex conjugate
of the NIfTI-MRS-convention FID; ``write_fsl_basis`` writes conj(fid) and ``read_fsl_basis``
conjugates back. ``basis_width`` is stored by FSL-MRS as metadata (``Basis.basis_fwhm``; its
own simulator writes the Lorentzian width it applied): our spectra carry no broadening, so it
is 0.0 Hz. Extra keys ``meta`` (as FSL-MRS writes: ``SimVersion``, ``TE``) and ``seq`` (sequence
description) are ignored by the FSL-MRS reader; no wall-clock time stamp is written so the
files are byte-reproducible.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import platform
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

__all__ = [
    "Basis",
    "Sequence",
    "load_macromolecules",
    "load_spin_systems",
    "main",
    "plot_basis",
    "ppm_axis",
    "read_fsl_basis",
    "run_basis",
    "simulate_basis",
    "simulate_macromolecule",
    "simulate_metabolite",
    "write_fsl_basis",
]

GENERATOR = "mrsflow.basis"
GAMMA_1H_MHZ_PER_T = 42.577478518  # CODATA 2018 proton gyromagnetic ratio / 2pi
PASSIVE_SPIN = {"31P": 0.5, "14N": 1.0, "13C": 0.5, "15N": 0.5, "19F": 0.5, "2H": 1.0}
_AMP_TOL = 1e-12  # transitions with |amplitude| below this (relative to 1 proton) are dropped
_CHUNK = 4096  # transitions per chunk when summing exponentials (bounds memory)


# --------------------------------------------------------------------------------------------
# Sequence description and axes
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sequence:
    """Acquisition and sequence timing.

    ``kind``: "press" (default), "steam" (TE = te1_ms + te2_ms, mixing time ``tm_ms``) or
    "pulse_acquire" (timings ignored).
    """

    f0_mhz: float
    te1_ms: float
    te2_ms: float
    dwell_s: float
    npoints: int
    centre_ppm: float = 4.65
    kind: str = "press"
    tm_ms: float = 0.0

    @property
    def te_ms(self) -> float:
        return float(self.te1_ms + self.te2_ms)

    def time_axis(self) -> np.ndarray:
        return np.arange(self.npoints) * self.dwell_s


def ppm_axis(n: int, dwell_s: float, f0_mhz: float, centre_ppm: float = 4.65) -> np.ndarray:
    """ppm of each point of ``np.fft.fftshift(np.fft.fft(fid))`` (ascending)."""
    return centre_ppm + np.fft.fftshift(np.fft.fftfreq(int(n), dwell_s)) / f0_mhz


# --------------------------------------------------------------------------------------------
# Data files
# --------------------------------------------------------------------------------------------
def _data_text(name: str) -> str:
    return resources.files("mrsflow").joinpath("data", name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _spin_systems_cached() -> str:
    return _data_text("spin_systems.yaml")


def load_spin_systems() -> dict:
    """Parsed ``data/spin_systems.yaml``: name -> definition (a fresh copy each call)."""
    systems = yaml.safe_load(_spin_systems_cached())
    for name, definition in systems.items():
        _compile_metabolite(name, definition)  # validate early, raises ValueError
    return systems


def load_macromolecules() -> dict:
    """Parsed ``data/macromolecules.yaml``: name -> {"components": [...]}."""
    return yaml.safe_load(_data_text("macromolecules.yaml"))


@dataclass
class _Group:
    label: str
    shifts: np.ndarray  # ppm, one entry per explicit proton
    jmat: np.ndarray  # Hz, symmetric, zero diagonal
    scale: float  # group scale x protons represented by a lone (uncoupled) spin
    passive_spin: list[float] = field(default_factory=list)  # S of each passive nucleus
    passive_j: np.ndarray | None = None  # (n_passive, n_protons) Hz


def _compile_metabolite(name: str, definition: dict) -> list[_Group]:
    """Turn a YAML metabolite definition into explicit-proton groups."""
    if not isinstance(definition, dict) or "groups" not in definition:
        raise ValueError(f"spin system {name!r}: needs a 'groups' list")
    groups = []
    for gi, gdef in enumerate(definition["groups"]):
        label = str(gdef.get("label", f"group{gi}"))
        scale = float(gdef.get("scale", 1.0))
        protons, passive = [], []  # (id, shift, n) / (id, S)
        for sdef in gdef["spins"]:
            sid = str(sdef["id"])
            nucleus = str(sdef.get("nucleus", "1H"))
            if nucleus == "1H":
                n = int(sdef.get("n", 1))
                if n < 1:
                    raise ValueError(f"{name}/{label}/{sid}: n must be >= 1")
                protons.append((sid, float(sdef["shift"]), n))
            elif nucleus in PASSIVE_SPIN:
                passive.append((sid, PASSIVE_SPIN[nucleus]))
            else:
                raise ValueError(f"{name}/{label}/{sid}: unsupported nucleus {nucleus!r}")
        ids = [p[0] for p in protons] + [p[0] for p in passive]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{name}/{label}: duplicate spin ids")
        couplings = gdef.get("couplings", []) or []
        pid = {p[0]: i for i, p in enumerate(protons)}
        xid = {p[0]: i for i, p in enumerate(passive)}
        # explicit expansion of equivalent protons (only needed when the group is coupled)
        lone = len(protons) == 1 and not couplings and not passive
        if lone:
            sid, shift, n = protons[0]
            groups.append(_Group(label, np.array([shift]), np.zeros((1, 1)), scale * n))
            continue
        owner = [i for i, p in enumerate(protons) for _ in range(p[2])]
        shifts = np.array([protons[i][1] for i in owner], dtype=float)
        nexp = len(owner)
        jsmall = np.zeros((len(protons), len(protons)))
        jpass = np.zeros((len(passive), len(protons)))
        for entry in couplings:
            a, b, jval = str(entry[0]), str(entry[1]), float(entry[2])
            if a in pid and b in pid:
                if a == b:
                    raise ValueError(f"{name}/{label}: self coupling {a}")
                jsmall[pid[a], pid[b]] = jsmall[pid[b], pid[a]] = jval
            elif a in pid and b in xid:
                jpass[xid[b], pid[a]] = jval
            elif b in pid and a in xid:
                jpass[xid[a], pid[b]] = jval
            else:
                raise ValueError(f"{name}/{label}: bad coupling {entry!r}")
        owner_arr = np.array(owner)
        jmat = jsmall[np.ix_(owner_arr, owner_arr)]
        np.fill_diagonal(jmat, 0.0)
        if nexp > 10:
            raise ValueError(f"{name}/{label}: {nexp} coupled protons is too many (max 10)")
        groups.append(
            _Group(
                label,
                shifts,
                jmat,
                scale,
                [p[1] for p in passive],
                jpass[:, owner_arr] if passive else None,
            )
        )
    return groups


# --------------------------------------------------------------------------------------------
# Spin operators (Zeeman product basis, spin k <-> bit (N-1-k); bit 0 = alpha, m = +1/2)
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _operators(nspins: int) -> dict:
    dim = 2**nspins
    states = np.arange(dim)
    bits = (states[None, :] >> (nspins - 1 - np.arange(nspins))[:, None]) & 1  # (N, dim)
    mz = 0.5 - bits  # Iz eigenvalue of each spin in each state
    mtot = mz.sum(axis=0)
    # order states by total M (descending) so H is block diagonal in the permuted basis
    perm = np.argsort(-mtot, kind="stable")
    mtot_p = mtot[perm]
    inv = np.empty(dim, dtype=int)
    inv[perm] = states
    # F+ = sum_k I+_k : |beta_k> -> |alpha_k>
    fplus = np.zeros((dim, dim))
    for k in range(nspins):
        down = states[bits[k] == 1]
        up = down ^ (1 << (nspins - 1 - k))
        fplus[up, down] = 1.0
    fplus = fplus[np.ix_(perm, perm)]
    fz = np.diag(mtot_p)
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
    r90x = np.array([[c, -1j * s], [-1j * s, c]])  # exp(-i pi/2 Ix)
    r180y = np.array([[0.0, -1.0], [1.0, 0.0]])  # exp(-i pi Iy)
    p90 = np.ones((1, 1), dtype=complex)
    p180 = np.ones((1, 1))
    for _ in range(nspins):
        p90 = np.kron(p90, r90x)
        p180 = np.kron(p180, r180y)
    p90 = p90[np.ix_(perm, perm)]
    p180 = p180[np.ix_(perm, perm)]
    blocks = []
    for m in np.unique(mtot_p)[::-1]:
        idx = np.nonzero(mtot_p == m)[0]
        blocks.append((float(m), idx[0], idx[-1] + 1))
    # flip-flop pairs for the I.I coupling: for each pair, states where the bits differ
    pairs = {}
    for k in range(nspins):
        for ll in range(k + 1, nspins):
            sel = states[bits[k] != bits[ll]]
            partner = sel ^ ((1 << (nspins - 1 - k)) | (1 << (nspins - 1 - ll)))
            pairs[(k, ll)] = (inv[sel], inv[partner])
    return {
        "mz": mz[:, perm],
        "mtot": mtot_p,
        "fplus": fplus,
        "fz": fz,
        "p90": p90,
        "p180": p180,
        "blocks": blocks,
        "pairs": pairs,
        "dim": dim,
    }


def _hamiltonian(nu_hz: np.ndarray, jmat: np.ndarray, ops: dict) -> np.ndarray:
    """H / (2 pi) in Hz, permuted (block-diagonal) Zeeman basis, real symmetric."""
    mz = ops["mz"]
    diag = nu_hz @ mz
    n = len(nu_hz)
    ham = np.zeros((ops["dim"], ops["dim"]))
    for k in range(n):
        for ll in range(k + 1, n):
            jkl = jmat[k, ll]
            if jkl == 0.0:
                continue
            diag = diag + jkl * mz[k] * mz[ll]
            rows, cols = ops["pairs"][(k, ll)]
            ham[rows, cols] += 0.5 * jkl
    ham[np.diag_indices_from(ham)] = diag
    return ham


def _eig_blocks(ham: np.ndarray, ops: dict) -> tuple[np.ndarray, np.ndarray]:
    """Block-wise eigendecomposition (H conserves total M)."""
    dim = ops["dim"]
    evals = np.empty(dim)
    vecs = np.zeros((dim, dim))
    for _m, a, b in ops["blocks"]:
        w, v = np.linalg.eigh(ham[a:b, a:b])
        evals[a:b] = w
        vecs[a:b, a:b] = v
    return evals, vecs


# --------------------------------------------------------------------------------------------
# Sequence simulation for one spin group at fixed passive-nucleus state
# --------------------------------------------------------------------------------------------
def _pathway(seq: Sequence) -> list[tuple]:
    """Sequence as a list of steps: ("pulse", op_name, keep_p) / ("delay", seconds)."""
    kind = seq.kind.lower()
    if kind == "press":
        t1, t2 = seq.te1_ms * 1e-3, seq.te2_ms * 1e-3
        return [
            ("pulse", "p90", -1),
            ("delay", t1 / 2),
            ("pulse", "p180", +1),
            ("delay", t1 / 2 + t2 / 2),
            ("pulse", "p180", -1),
            ("delay", t2 / 2),
        ]
    if kind == "steam":
        te, tm = seq.te_ms * 1e-3, seq.tm_ms * 1e-3
        return [
            ("pulse", "p90", +1),
            ("delay", te / 2),
            ("pulse", "p90", 0),
            ("delay", tm),
            ("pulse", "p90", -1),
            ("delay", te / 2),
        ]
    if kind in ("pulse_acquire", "pulse-acquire", "fid"):
        return [("pulse", "p90", -1)]
    raise ValueError(f"unknown sequence kind {seq.kind!r} (press, steam, pulse_acquire)")


def _transitions(nu_hz: np.ndarray, jmat: np.ndarray, steps: list[tuple]):
    """Return (amplitudes, angular frequencies rad/s) of the detected transitions."""
    ops = _operators(len(nu_hz))
    ham = _hamiltonian(nu_hz, jmat, ops)
    evals, vecs = _eig_blocks(ham, ops)
    w = 2.0 * np.pi * evals  # rad/s
    mt = ops["mtot"]
    pmat = mt[:, None] - mt[None, :]  # coherence order of rho_ab in the eigenbasis
    dphase = w[:, None] - w[None, :]
    pulses = {}
    rho = vecs.T @ ops["fz"] @ vecs  # thermal equilibrium deviation ~ Fz
    rho = rho.astype(complex)
    for step in steps:
        if step[0] == "pulse":
            _, name, keep = step
            if name not in pulses:
                pulses[name] = vecs.T @ ops[name] @ vecs
            pop = pulses[name]
            rho = pop @ rho @ pop.conj().T
            rho = np.where(pmat == keep, rho, 0.0)
        else:
            tau = step[1]
            if tau != 0.0:
                rho = rho * np.exp(-1j * dphase * tau)
    fp = vecs.T @ ops["fplus"] @ vecs
    amps, freqs = [], []
    blocks = ops["blocks"]
    for (_m_hi, a_hi, b_hi), (_m_lo, a_lo, b_lo) in itertools.pairwise(blocks):
        # rho_ab with a in the lower-M block, b in the upper (p = -1); F+_ba
        r = rho[a_lo:b_lo, a_hi:b_hi]
        f = fp[a_hi:b_hi, a_lo:b_lo].T
        amp = r * f
        freq = w[a_hi:b_hi][None, :] - w[a_lo:b_lo][:, None]
        amps.append(amp.ravel())
        freqs.append(freq.ravel())
    # Tr over the 2^N-dim space counts each proton's signal 2^(N-1) times (the other spins'
    # identity factors); divide so that one proton contributes 1 before sequence normalisation
    amps = np.concatenate(amps) / 2.0 ** (len(nu_hz) - 1)
    freqs = np.concatenate(freqs)
    keep = np.abs(amps) > _AMP_TOL
    return amps[keep], freqs[keep]


@functools.lru_cache(maxsize=8)
def _norm_constant(steps_key: tuple) -> complex:
    """1 / signal(t=0) of one on-resonance uncoupled proton through the sequence."""
    amps, _ = _transitions(np.zeros(1), np.zeros((1, 1)), list(steps_key))
    total = amps.sum()
    if abs(total) < 1e-9:
        raise ValueError("sequence produces no signal for an uncoupled spin")
    return complex(1.0 / total)


def _sum_exponentials(amps: np.ndarray, freqs: np.ndarray, npoints: int, dwell: float):
    """fid[n] = sum_k amps_k exp(i freqs_k n dwell), vectorised without per-point loops.

    With n = j*B + i (B ~ sqrt(npoints)) the exponential factorises,
    exp(i w (jB + i) dt) = exp(i w i dt) * exp(i w jB dt), so the FID is one complex matrix
    product (B x K) @ (K x npoints/B): ~2 sqrt(npoints) K exponentials instead of npoints K,
    each factor evaluated directly (no error accumulation by repeated multiplication).
    """
    if len(freqs) > 1:  # merge numerically identical frequencies (degenerate transitions)
        key = np.round(freqs, 6)
        uniq, inv = np.unique(key, return_inverse=True)
        if len(uniq) < len(freqs):
            summed = np.zeros(len(uniq), dtype=complex)
            np.add.at(summed, inv, amps)
            fsum = np.zeros(len(uniq))
            np.add.at(fsum, inv, freqs)
            amps, freqs = summed, fsum / np.bincount(inv)
    block = max(1, math.isqrt(npoints))
    nblk = -(-npoints // block)
    inner = np.arange(block) * dwell
    outer = np.arange(nblk) * (block * dwell)
    fid = np.zeros(block * nblk, dtype=complex)
    for start in range(0, len(freqs), _CHUNK):
        sl = slice(start, start + _CHUNK)
        e_in = np.exp(1j * np.outer(inner, freqs[sl]))  # (B, K)
        e_out = np.exp(1j * np.outer(freqs[sl], outer)) * amps[sl, None]  # (K, nblk)
        fid += (e_in @ e_out).T.ravel()
    return fid[:npoints]


def _group_fid(group: _Group, seq: Sequence, steps: list[tuple], norm: complex) -> np.ndarray:
    t = seq.time_axis()
    nu = (group.shifts - seq.centre_ppm) * seq.f0_mhz
    if len(nu) == 1 and group.passive_j is None:
        # lone uncoupled spin: an exact singlet whatever the (ideal) sequence
        return group.scale * np.exp(2j * np.pi * nu[0] * t)
    states = [np.arange(-s, s + 1) for s in group.passive_spin]  # m values of each nucleus
    combos = list(itertools.product(*states)) if states else [()]
    amps_all, freqs_all = [], []
    for combo in combos:
        offset = np.zeros_like(nu)
        if combo:
            offset = np.asarray(combo, dtype=float) @ group.passive_j
        amps, freqs = _transitions(nu + offset, group.jmat, steps)
        amps_all.append(amps / len(combos))
        freqs_all.append(freqs)
    amps = np.concatenate(amps_all) * norm * group.scale
    return _sum_exponentials(amps, np.concatenate(freqs_all), seq.npoints, seq.dwell_s)


def simulate_metabolite(name: str, seq: Sequence, systems: dict | None = None) -> np.ndarray:
    """Complex128 FID (``seq.npoints``) of metabolite ``name`` (NIfTI-MRS convention)."""
    if systems is None:
        systems = load_spin_systems()
    if name not in systems:
        raise KeyError(f"no spin system for {name!r}; known: {sorted(systems)}")
    groups = _compile_metabolite(name, systems[name])
    steps = _pathway(seq)
    norm = _norm_constant(tuple(steps))
    fid = np.zeros(seq.npoints, dtype=complex)
    for group in groups:
        fid += _group_fid(group, seq, steps, norm)
    return fid


def simulate_macromolecule(name: str, seq: Sequence, definitions: dict | None = None) -> np.ndarray:
    """FID of a parametrised MM/lipid signal: sum of Gaussian lines, area = ``amp``."""
    if definitions is None:
        definitions = load_macromolecules()
    if name not in definitions:
        raise KeyError(f"no macromolecule {name!r}; known: {sorted(definitions)}")
    t = seq.time_axis()
    fid = np.zeros(seq.npoints, dtype=complex)
    for comp in definitions[name]["components"]:
        nu = (float(comp["ppm"]) - seq.centre_ppm) * seq.f0_mhz
        fwhm_hz = float(comp["fwhm_ppm"]) * seq.f0_mhz
        # FT of exp(-a t^2) has FWHM 2 sqrt(a ln2)/pi  ->  a = (pi FWHM)^2 / (4 ln 2)
        decay = np.exp(-((np.pi * fwhm_hz * t) ** 2) / (4.0 * math.log(2.0)))
        fid += float(comp["amp"]) * np.exp(2j * np.pi * nu * t) * decay
    return fid


def simulate_basis(
    seq: Sequence, metabolites: list[str], macromolecules: list[str]
) -> dict[str, np.ndarray]:
    """All requested basis FIDs, metabolites first, in the order given."""
    systems = load_spin_systems()
    mm_defs = load_macromolecules() if macromolecules else {}
    out: dict[str, np.ndarray] = {}
    for name in metabolites:
        out[name] = simulate_metabolite(name, seq, systems)
    for name in macromolecules:
        if name in out:
            raise ValueError(f"duplicate basis name {name!r}")
        out[name] = simulate_macromolecule(name, seq, mm_defs)
    return out


# --------------------------------------------------------------------------------------------
# FSL-MRS basis I/O
# --------------------------------------------------------------------------------------------
@dataclass
class Basis:
    names: list[str]
    fids: np.ndarray  # (n_met, npoints) complex, NIfTI-MRS convention
    dwell_s: float
    f0_mhz: float
    centre_ppm: float
    te_ms: float
    meta: dict = field(default_factory=dict)

    @property
    def npoints(self) -> int:
        return int(self.fids.shape[1])

    def ppm(self) -> np.ndarray:
        return ppm_axis(self.npoints, self.dwell_s, self.f0_mhz, self.centre_ppm)


def _seq_dict(seq: Sequence) -> dict:
    return {
        "sequence": seq.kind,
        "pulses": "ideal (instantaneous, non-selective)",
        "B0": seq.f0_mhz / GAMMA_1H_MHZ_PER_T,
        "f0_MHz": seq.f0_mhz,
        "TE": seq.te_ms,
        "TE1": seq.te1_ms,
        "TE2": seq.te2_ms,
        "TM": seq.tm_ms,
        "Rx_SW": 1.0 / seq.dwell_s,
        "Rx_Points": seq.npoints,
        "centre_ppm": seq.centre_ppm,
        "Nucleus": "1H",
    }


def _is_ours(path: Path) -> bool:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and content.get("meta", {}).get("generator") == GENERATOR


def write_fsl_basis(
    outdir, fids: dict[str, np.ndarray], seq: Sequence, meta: dict | None = None
) -> list[Path]:
    """Write one FSL-MRS basis JSON per entry (``<outdir>/<name>.json``); return the paths.

    The stored FID is the complex conjugate of ``fids[name]`` (FSL-MRS conjugates on read).
    Stale JSON files previously written by this module for names not in ``fids`` are removed
    so the folder holds exactly the requested basis.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob("*.json"):
        if old.stem not in fids and _is_ours(old):
            old.unlink()
    from mrsflow import __version__

    paths = []
    for name, fid in fids.items():
        fid = np.asarray(fid, dtype=complex)
        if fid.shape != (seq.npoints,):
            raise ValueError(f"{name}: FID shape {fid.shape} != ({seq.npoints},)")
        stored = np.conj(fid)
        content = {
            "basis": {
                "basis_re": stored.real.tolist(),
                "basis_im": stored.imag.tolist(),
                "basis_dwell": float(seq.dwell_s),
                "basis_centre": float(seq.f0_mhz),
                "basis_width": 0.0,
                "basis_name": name,
            },
            "meta": {
                "SimVersion": f"{GENERATOR} {__version__}",
                "generator": GENERATOR,
                "TE": seq.te_ms,
                "conjugated": "basis_re/basis_im = conj(NIfTI-MRS FID), FSL-MRS convention",
                **(meta or {}),
            },
            "seq": _seq_dict(seq),
        }
        path = outdir / f"{name}.json"
        path.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def read_fsl_basis(indir) -> Basis:
    """Read a folder of FSL-MRS basis JSONs (ours or FSL-MRS's), names sorted as FSL-MRS."""
    indir = Path(indir)
    files = sorted(indir.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no .json basis files in {indir}")
    names, fids, dwells, cfs, metas = [], [], [], [], []
    te_ms, centre = math.nan, 4.65
    for path in files:
        content = json.loads(path.read_text(encoding="utf-8"))
        if "basis" not in content:
            raise ValueError(f"{path}: FSL basis file must have a 'basis' field")
        b = content["basis"]
        fid = np.conj(np.asarray(b["basis_re"], float) + 1j * np.asarray(b["basis_im"], float))
        names.append(str(b.get("basis_name", path.stem)))
        fids.append(fid)
        dwells.append(float(b["basis_dwell"]))
        cf = float(b["basis_centre"])
        cfs.append(cf / 1e6 if cf > 1e4 else cf)  # tolerate Hz (cf. FSL-MRS checkCFUnits)
        meta = content.get("meta") or {}
        seqd = content.get("seq") or {}
        metas.append(meta)
        if math.isnan(te_ms):
            for src in (meta, seqd):
                if isinstance(src, dict) and src.get("TE") is not None:
                    te_ms = float(src["TE"])
                    break
        if isinstance(seqd, dict) and "centre_ppm" in seqd:
            centre = float(seqd["centre_ppm"])
    if len({len(f) for f in fids}) != 1:
        raise ValueError("basis FIDs have different lengths")
    if not (np.allclose(dwells, dwells[0]) and np.allclose(cfs, cfs[0])):
        raise ValueError("basis files disagree on dwell time or spectrometer frequency")
    return Basis(
        names=names,
        fids=np.vstack(fids),
        dwell_s=dwells[0],
        f0_mhz=cfs[0],
        centre_ppm=centre,
        te_ms=te_ms,
        meta={"files": [str(f) for f in files], "per_file": metas},
    )


# --------------------------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------------------------
def plot_basis(basis: Basis, png_path, ppm_range=(0.2, 4.3), lb_hz: float = 4.0) -> None:
    """Stacked real spectra (exponential broadening ``lb_hz``), ppm axis reversed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(basis.npoints) * basis.dwell_s
    apod = np.exp(-np.pi * lb_hz * t)
    ppm = basis.ppm()
    sel = (ppm >= min(ppm_range)) & (ppm <= max(ppm_range))
    specs = np.fft.fftshift(np.fft.fft(basis.fids * apod[None, :], axis=1), axes=1).real
    specs = specs[:, sel]
    peak = np.max(np.abs(specs), axis=1) if specs.size else np.ones(len(basis.names))
    peak = np.where(peak > 0, peak, 1.0)
    fig_h = max(4.0, 0.45 * len(basis.names) + 1.5)
    fig, ax = plt.subplots(figsize=(7.0, fig_h))
    for i, (name, spec, top) in enumerate(zip(basis.names, specs, peak, strict=True)):
        off = -1.2 * i  # each trace normalised to its own maximum |value|
        ax.plot(ppm[sel], spec / top + off, lw=0.8, color="k")
        ax.text(max(ppm_range), off + 0.25, f"{name} (max {top:.3g})", fontsize=7, ha="left")
    ax.set_xlim(max(ppm_range), min(ppm_range))
    ax.set_xlabel("chemical shift (ppm)")
    ax.set_yticks([])
    ax.set_title(
        f"basis: {basis.f0_mhz:.2f} MHz, TE {basis.te_ms:g} ms, lb {lb_hz:g} Hz "
        "(real part, each trace normalised)",
        fontsize=9,
    )
    fig.tight_layout()
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Workflow entry points
# --------------------------------------------------------------------------------------------
def sequence_from_config(config: dict) -> Sequence:
    """Sequence from the workflow config keys (field_mhz, te1_ms, te2_ms, bandwidth_hz, ...)."""
    return Sequence(
        f0_mhz=float(config["field_mhz"]),
        te1_ms=float(config["te1_ms"]),
        te2_ms=float(config["te2_ms"]),
        dwell_s=1.0 / float(config["bandwidth_hz"]),
        npoints=int(config["points"]),
        centre_ppm=float(config.get("centre_ppm", 4.65)),
        kind=str(config.get("kind", "press")),
        tm_ms=float(config.get("tm_ms", 0.0)),
    )


def is_parametrised_mm(name: str) -> bool:
    """The parametrised MM entries (MM09, MM12, ...) a measured MM spectrum replaces."""
    return name.startswith("MM") and name[2:].isdigit()


def read_measured_mm(path, seq: Sequence) -> np.ndarray:
    """A measured MM spectrum (NIfTI-MRS, one FID, from :mod:`mrsflow.mm`) on the basis
    grid: same dwell time required, truncated or zero-filled to the basis' points."""
    from mrsflow import nmrs

    data, _, _, dwell, _ = nmrs.read(Path(path))
    fid = np.asarray(data).reshape(-1)
    if abs(dwell - seq.dwell_s) > 1e-9 * seq.dwell_s:
        raise ValueError(f"{path}: the MM spectrum's dwell time {dwell:g} s differs from the "
                         f"protocol's {seq.dwell_s:g} s")
    out = np.zeros(seq.npoints, dtype=complex)
    n = min(seq.npoints, fid.size)
    out[:n] = fid[:n]
    return out


def run_basis(config: dict, outdir, png, mm_nii=None) -> list[Path]:
    """Simulate the configured basis, write ``outdir/<name>.json`` each, and the PNG. With
    ``mm_nii`` (a measured MM spectrum, :mod:`mrsflow.mm`) it replaces the parametrised MM
    entries as one entry ``MM``; the lipid entries stay."""
    seq = sequence_from_config(config)
    mms = list(config.get("macromolecules", []))
    if mm_nii is not None:
        mms = [n for n in mms if not is_parametrised_mm(n)]
    fids = simulate_basis(seq, list(config.get("metabolites", [])), mms)
    meta = {"platform": platform.python_implementation() + " " + platform.python_version()}
    if mm_nii is not None:
        fids["MM"] = read_measured_mm(mm_nii, seq)
        meta["measured_mm"] = str(mm_nii)
    paths = write_fsl_basis(outdir, fids, seq, meta=meta)
    basis = Basis(
        names=list(fids),
        fids=np.vstack(list(fids.values())),
        dwell_s=seq.dwell_s,
        f0_mhz=seq.f0_mhz,
        centre_ppm=seq.centre_ppm,
        te_ms=seq.te_ms,
    )
    plot_basis(basis, png)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Simulate a PRESS basis set (FSL-MRS JSON).")
    parser.add_argument("config", help="YAML/JSON file with the basis config keys")
    parser.add_argument("outdir")
    parser.add_argument("png")
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    if "basis" in config and isinstance(config["basis"], dict):
        config = config["basis"]
    paths = run_basis(config, args.outdir, args.png)
    print(f"wrote {len(paths)} basis files to {args.outdir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
