#!/usr/bin/python3
"""Small synthetic MeasurementSets for checking SAGECal (python3-casacore).

  ms_tool.py make OUT.MS [--stations 16 --times 20 --channels 2 --freq 140e6 ...]
      an MS with DATA, MODEL_DATA, CORRECTED_DATA and MODEL_SOLVED set to zero,
      real UVW of a LOFAR-like array tracking 3C196; SAGECal's simulation
      mode (`sagecal -a 1`) fills it from a sky model.
  ms_tool.py gains OUT.solutions --stations N --cluster-file C --tiles K [--seed S]
      known direction-dependent gains in SAGECal's solutions format, for
      `sagecal -a 1 -p OUT.solutions` (simulate data corrupted by them).
  ms_tool.py noise MS --sigma S [--seed K] [--column DATA]
      adds complex Gaussian noise (S Jy per real and imaginary part).
  ms_tool.py compare MS [--data DATA] [--model MODEL_DATA ...]
      one JSON line: the RMS of DATA and of DATA - MODEL for each model column,
      over unflagged cross-correlations (Jy).

Nothing here calibrates: SAGECal does. This only makes inputs and measures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
from casacore import tables as pt

# 3C196 (the phase centre of the seed paper's sky model, 3c196.sky.txt).
RA_3C196 = (8 + 13 / 60 + 36.0 / 3600) * math.pi / 12
DEC_3C196 = (48 + 13 / 60 + 3.0 / 3600) * math.pi / 180
# LOFAR's core (ITRF, metres) and latitude / longitude (radians).
LOFAR_ITRF = np.array([3826577.066, 461022.948, 5064892.786])
LOFAR_LAT = math.radians(52.915)
LOFAR_LON = math.radians(6.869)
SIDEREAL_RATE = 2 * math.pi / 86164.0905  # radians of hour angle per second
COLUMNS = ("DATA", "MODEL_DATA", "CORRECTED_DATA", "MODEL_SOLVED")
START_MJD_S = 59000.0 * 86400  # 2020-05-31, seconds since MJD 0


def station_layout(stations: int, radius_m: float, rng: np.random.Generator) -> np.ndarray:
    """East, north, up offsets (m) of STATIONS stations in a disc, none closer than 30 m."""
    positions: list[np.ndarray] = []
    while len(positions) < stations:
        east, north = rng.uniform(-radius_m, radius_m, size=2)
        candidate = np.array([east, north, 0.0])
        if math.hypot(east, north) <= radius_m and all(np.linalg.norm(candidate - p) > 30 for p in positions):
            positions.append(candidate)
    return np.array(positions)


def enu_to_itrf(enu: np.ndarray) -> np.ndarray:
    sl, cl, so, co = math.sin(LOFAR_LAT), math.cos(LOFAR_LAT), math.sin(LOFAR_LON), math.cos(LOFAR_LON)
    rotation = np.array([[-so, -sl * co, cl * co], [co, -sl * so, cl * so], [0.0, cl, sl]])
    return LOFAR_ITRF + enu @ rotation.T


def uvw_of(enu: np.ndarray, hour_angle: float, dec: float) -> np.ndarray:
    """Per-station (u, v, w) in metres at HOUR_ANGLE for a source at DEC."""
    east, north, up = enu[:, 0], enu[:, 1], enu[:, 2]
    x = -math.sin(LOFAR_LAT) * north + math.cos(LOFAR_LAT) * up
    y = east
    z = math.cos(LOFAR_LAT) * north + math.sin(LOFAR_LAT) * up
    sh, ch, sd, cd = math.sin(hour_angle), math.cos(hour_angle), math.sin(dec), math.cos(dec)
    return np.stack([sh * x + ch * y, -sd * ch * x + sd * sh * y + cd * z, cd * ch * x - cd * sh * y + sd * z], axis=1)


def data_columns(channels: int) -> dict:
    descs = [pt.makearrcoldesc(name, 0j, shape=[channels, 4], valuetype="complex") for name in COLUMNS]
    return pt.maketabdesc(descs)


def make(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    enu = station_layout(args.stations, args.radius, rng)
    baselines = [(i, j) for i in range(args.stations) for j in range(i + 1, args.stations)]
    rows = len(baselines) * args.times
    ms = pt.default_ms(args.out, data_columns(args.channels))
    ant1 = np.array([i for i, _ in baselines] * args.times, dtype=np.int32)
    ant2 = np.array([j for _, j in baselines] * args.times, dtype=np.int32)
    times = START_MJD_S + args.interval * (np.repeat(np.arange(args.times), len(baselines)) + 0.5)
    uvw = np.empty((rows, 3))
    for step in range(args.times):
        hour_angle = args.hour_angle + SIDEREAL_RATE * args.interval * (step + 0.5)
        per_station = uvw_of(enu, hour_angle, args.dec)
        block = slice(step * len(baselines), (step + 1) * len(baselines))
        uvw[block] = per_station[ant2[block]] - per_station[ant1[block]]
    ms.addrows(rows)
    for name, values in (("ANTENNA1", ant1), ("ANTENNA2", ant2), ("TIME", times), ("TIME_CENTROID", times),
                         ("INTERVAL", np.full(rows, args.interval)), ("EXPOSURE", np.full(rows, args.interval)),
                         ("UVW", uvw), ("FLAG", np.zeros((rows, args.channels, 4), dtype=bool)),
                         ("WEIGHT", np.ones((rows, 4), dtype=np.float32)),
                         ("SIGMA", np.ones((rows, 4), dtype=np.float32))):
        ms.putcol(name, values)
    ms.close()
    fill_subtables(args, enu, times)
    print(json.dumps({"ms": args.out, "stations": args.stations, "baselines": len(baselines), "times": args.times,
                      "channels": args.channels, "freq_hz": args.freq}))


def fill_subtables(args: argparse.Namespace, enu: np.ndarray, times: np.ndarray) -> None:
    n = args.stations
    with pt.table(f"{args.out}/ANTENNA", readonly=False, ack=False) as antenna:
        antenna.addrows(n)
        antenna.putcol("NAME", [f"ST{i:03d}" for i in range(n)])
        antenna.putcol("STATION", ["SYNTH"] * n)
        antenna.putcol("TYPE", ["GROUND-BASED"] * n)
        antenna.putcol("MOUNT", ["X-Y"] * n)
        antenna.putcol("POSITION", enu_to_itrf(enu))
        antenna.putcol("OFFSET", np.zeros((n, 3)))
        antenna.putcol("DISH_DIAMETER", np.full(n, 30.0))
    freqs = args.freq + args.chan_width * (np.arange(args.channels) - (args.channels - 1) / 2)
    with pt.table(f"{args.out}/SPECTRAL_WINDOW", readonly=False, ack=False) as spw:
        spw.addrows(1)
        for name, value in (("NUM_CHAN", args.channels), ("CHAN_FREQ", freqs[None, :]),
                            ("CHAN_WIDTH", np.full((1, args.channels), args.chan_width)),
                            ("EFFECTIVE_BW", np.full((1, args.channels), args.chan_width)),
                            ("RESOLUTION", np.full((1, args.channels), args.chan_width)),
                            ("REF_FREQUENCY", args.freq), ("TOTAL_BANDWIDTH", args.chan_width * args.channels),
                            ("MEAS_FREQ_REF", 5), ("NAME", f"SB-{args.freq / 1e6:.3f}MHz")):
            spw.putcol(name, value if isinstance(value, np.ndarray) else [value])
    with pt.table(f"{args.out}/POLARIZATION", readonly=False, ack=False) as pol:
        pol.addrows(1)
        pol.putcol("NUM_CORR", [4])
        pol.putcol("CORR_TYPE", np.array([[9, 10, 11, 12]], dtype=np.int32))
        pol.putcol("CORR_PRODUCT", np.array([[[0, 0], [0, 1], [1, 0], [1, 1]]], dtype=np.int32))
    with pt.table(f"{args.out}/DATA_DESCRIPTION", readonly=False, ack=False) as dd:
        dd.addrows(1)
        dd.putcol("SPECTRAL_WINDOW_ID", [0])
        dd.putcol("POLARIZATION_ID", [0])
    direction = np.array([[[args.ra, args.dec]]])
    with pt.table(f"{args.out}/FIELD", readonly=False, ack=False) as field:
        field.addrows(1)
        for name in ("PHASE_DIR", "DELAY_DIR", "REFERENCE_DIR"):
            field.putcol(name, direction)
        field.putcol("NAME", ["3C196"])
        field.putcol("TIME", [times[0]])
    with pt.table(f"{args.out}/OBSERVATION", readonly=False, ack=False) as obs:
        obs.addrows(1)
        obs.putcol("TELESCOPE_NAME", ["LOFAR"])
        obs.putcol("TIME_RANGE", np.array([[times[0], times[-1]]]))
        obs.putcol("OBSERVER", ["astrostack"])
        obs.putcol("PROJECT", ["sagecal-selfcheck"])


def cluster_chunks(path: str) -> list[int]:
    """Chunk counts of the clusters in a SAGECal cluster file, in file order."""
    chunks = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if fields and not fields[0].startswith("#"):
                chunks.append(int(fields[1]))
    return chunks


def gains(args: argparse.Namespace) -> None:
    """SAGECal solutions: 3 header lines, then per tile 8N rows `index value...`, one
    value per cluster (file order) and chunk; index = 8 * station + k with k
    re/im of J00, J01, J10, J11."""
    rng = np.random.default_rng(args.seed)
    chunks = cluster_chunks(args.cluster_file)
    n = args.stations
    columns = []
    for count in chunks:
        amplitude = 1 + rng.uniform(-args.amp, args.amp, size=(n, 2))
        phase = rng.uniform(-args.phase, args.phase, size=(n, 2))
        leak = args.leak * (rng.normal(size=(n, 2)) + 1j * rng.normal(size=(n, 2)))
        jones = np.zeros((n, 4), dtype=complex)
        jones[:, 0] = amplitude[:, 0] * np.exp(1j * phase[:, 0])
        jones[:, 1] = leak[:, 0]
        jones[:, 2] = leak[:, 1]
        jones[:, 3] = amplitude[:, 1] * np.exp(1j * phase[:, 1])
        flat = np.stack([jones.real, jones.imag], axis=2).reshape(n * 8)
        columns.extend([flat] * count)
    with open(args.out, "w", encoding="utf-8") as out:
        out.write("# solution file created by astrostack ms_tool.py (known gains)\n")
        out.write("# freq(MHz) bandwidth(MHz) time_interval(min) stations clusters effective_clusters\n")
        out.write(f"{args.freq / 1e6:f} 0.1 1.0 {n} {len(chunks)} {sum(chunks)}\n")
        for _ in range(args.tiles):
            for index in range(8 * n):
                out.write(f"{index} " + " ".join(f" {column[index]:e}" for column in columns) + "\n")


def noise(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    with pt.table(args.ms, readonly=False, ack=False) as ms:
        data = ms.getcol(args.column)
        data += args.sigma * (rng.normal(size=data.shape) + 1j * rng.normal(size=data.shape))
        ms.putcol(args.column, data)
    print(json.dumps({"ms": args.ms, "column": args.column, "sigma_jy": args.sigma}))


def rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.abs(values) ** 2))) if values.size else float("nan")


def compare(args: argparse.Namespace) -> None:
    with pt.table(args.ms, ack=False) as ms:
        cross = ms.getcol("ANTENNA1") != ms.getcol("ANTENNA2")
        good = ~ms.getcol("FLAG")[cross]
        data = ms.getcol(args.data)[cross]
        result = {"ms": args.ms, "rows": int(cross.sum()), "rms": {args.data: rms(data[good])}, "residual_rms": {}}
        for column in args.model:
            result["residual_rms"][column] = rms((data - ms.getcol(column)[cross])[good])
    print(json.dumps(result))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make", help="an empty synthetic MS")
    p.add_argument("out")
    p.add_argument("--stations", type=int, default=16)
    p.add_argument("--times", type=int, default=20)
    p.add_argument("--channels", type=int, default=2)
    p.add_argument("--freq", type=float, default=140e6, help="centre frequency (Hz)")
    p.add_argument("--chan-width", type=float, default=10e3, help="channel width (Hz)")
    p.add_argument("--interval", type=float, default=10.0, help="integration time (s)")
    p.add_argument("--radius", type=float, default=1500.0, help="array radius (m)")
    p.add_argument("--hour-angle", type=float, default=-0.2, help="hour angle at the start (rad)")
    p.add_argument("--ra", type=float, default=RA_3C196, help="phase centre RA (rad)")
    p.add_argument("--dec", type=float, default=DEC_3C196, help="phase centre Dec (rad)")
    p.add_argument("--seed", type=int, default=196)
    p.set_defaults(run=make)
    p = sub.add_parser("gains", help="known gains as a SAGECal solutions file")
    p.add_argument("out")
    p.add_argument("--stations", type=int, required=True)
    p.add_argument("--cluster-file", required=True)
    p.add_argument("--tiles", type=int, required=True, help="solution intervals (timeslots / -t, rounded up)")
    p.add_argument("--freq", type=float, default=140e6)
    p.add_argument("--amp", type=float, default=0.2, help="amplitude errors: 1 +- AMP")
    p.add_argument("--phase", type=float, default=0.8, help="phase errors: +- PHASE rad")
    p.add_argument("--leak", type=float, default=0.02, help="polarisation leakage scale")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(run=gains)
    p = sub.add_parser("noise", help="add Gaussian noise to a column")
    p.add_argument("ms")
    p.add_argument("--sigma", type=float, required=True, help="Jy per real and imaginary part")
    p.add_argument("--column", default="DATA")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(run=noise)
    p = sub.add_parser("compare", help="RMS of a column and of its residuals against model columns")
    p.add_argument("ms")
    p.add_argument("--data", default="DATA")
    p.add_argument("--model", action="append", default=[])
    p.set_defaults(run=compare)
    args = parser.parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
