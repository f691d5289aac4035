"""``trackserve simulate``: write simulated TrackML events (hits, truth, particles)."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

ORDER = 10

#: Options of random particles: (flag, SimulationConfig field, type, help).
_RANDOM_OPTIONS = (
    ("--num-particles", "num_particles", int, "number of random particles per event"),
    ("--pt-min", "pt_min", float, "lowest transverse momentum (GeV)"),
    ("--pt-max", "pt_max", float, "highest transverse momentum (GeV)"),
    ("--pt-power", "pt_power", float, "spectrum dN/dpT ~ pT^-POWER"),
    ("--eta-max", "eta_max", float, "pseudorapidity uniform in [-ETA_MAX, ETA_MAX]"),
    ("--vertex-sigma-xy", "vertex_sigma_xy", float, "Gaussian vertex width in x and y (mm)"),
    ("--vertex-sigma-z", "vertex_sigma_z", float, "Gaussian vertex width in z (mm)"),
)
#: Options of the collision region, with random particles or --particles: (flag, SimulationConfig field, type, help).
_COLLISION_OPTIONS = (
    ("--vertex-offset-z", "vertex_offset_z", float, "move every particle's production point along the beam by this "
                                                    "(mm; with --particles too)"),
)
#: Detector options: (flag, SimulationConfig field, type, help).
_DETECTOR_OPTIONS = (
    ("--magnetic-field", "magnetic_field", float, "solenoid field along +z (T)"),
    ("--noise-fraction", "noise_fraction", float, "fraction of the hits that are noise, in [0, 1)"),
    ("--inefficiency", "inefficiency", float, "probability to lose each hit"),
    ("--resolution-u", "resolution_u", float, "smearing width in local u for every module (mm; default pitch_u/sqrt(12))"),
    ("--resolution-v", "resolution_v", float, "smearing width in local v for every module (mm; default pitch_v/sqrt(12))"),
    ("--x-over-x0", "x_over_x0", float, "material per layer in radiation lengths at normal incidence (0: no multiple scattering)"),
)


def register(subparsers) -> None:
    """Add the ``simulate`` subcommand."""
    from ..events.simulate import SimulationConfig

    defaults = {field.name: field.default for field in fields(SimulationConfig)}
    parser = subparsers.add_parser(
        "simulate",
        help="simulate TrackML events on the TrackML detector geometry",
        description=(
            "Simulate charged particles on helices in a solenoid field through the TrackML detector and write "
            "TrackML files event<id>-{hits,truth,particles}.csv. Particles are random (options below) or read "
            "from a TrackML particles table (--particles)."
        ),
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="directory to write the events to")
    parser.add_argument("--events", type=int, default=1, metavar="N", help="number of events (default 1)")
    parser.add_argument("--first-event-id", type=int, default=0, metavar="ID", help="id of the first event (default 0)")
    parser.add_argument("--particles", metavar="TABLE.csv", help="TrackML particles table to simulate in every event")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed; event i uses the seed sequence (S, 3, its event id), never one of "
                             "the events `trackserve train --seed S` simulates for training or validation")
    parser.add_argument("--geometry", metavar="detectors.csv", help="TrackML geometry file (default: the repository's data/detectors.csv)")
    parser.add_argument("--gzip", action="store_true", help="write .csv.gz files")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of events already in --output (default: refuse to write over them)")
    random_group = parser.add_argument_group("random particles (without --particles)")
    for flag, name, kind, text in _RANDOM_OPTIONS:
        random_group.add_argument(flag, dest=name, type=kind, default=None, help=f"{text} (default {defaults[name]})")
    collision_group = parser.add_argument_group("collision region")
    for flag, name, kind, text in _COLLISION_OPTIONS:
        collision_group.add_argument(flag, dest=name, type=kind, default=None, metavar="MM",
                                     help=f"{text} (default {defaults[name]})")
    detector_group = parser.add_argument_group("detector")
    for flag, name, kind, text in _DETECTOR_OPTIONS:
        shown = defaults[name] if defaults[name] is not None else "per module"
        detector_group.add_argument(flag, dest=name, type=kind, default=None, help=f"{text} (default {shown})")
    detector_group.add_argument("--no-smearing", dest="smearing", action="store_false", help="write the true positions")
    parser.set_defaults(handler=run, smearing=True)


def _config(args: argparse.Namespace):
    """The SimulationConfig of the command-line options (defaults where not given)."""
    from ..errors import InputError
    from ..events.simulate import SimulationConfig

    given = {name: getattr(args, name) for _, name, _, _ in _RANDOM_OPTIONS + _COLLISION_OPTIONS + _DETECTOR_OPTIONS}
    if args.particles is not None:
        clashing = [flag for flag, name, _, _ in _RANDOM_OPTIONS if given[name] is not None]
        if clashing:
            raise InputError(
                f"{', '.join(clashing)}: options of random particles, which --particles replaces; drop them "
                f"or drop --particles {args.particles}"
            )
    if not args.smearing:
        ignored = [flag for flag, name, _, _ in _DETECTOR_OPTIONS if name.startswith("resolution") and given[name] is not None]
        if ignored:
            raise InputError(f"{', '.join(ignored)} set the smearing, which --no-smearing turns off; drop one of them")
    config = replace(SimulationConfig(), smearing=args.smearing, **{k: v for k, v in given.items() if v is not None})
    config.validate()
    return config


def _event_files(output, event_id: int) -> list:
    """The TrackML files of event ``event_id`` in directory ``output`` (either compression)."""
    from ..events.event import event_name
    from ..events.trackml import event_files

    return event_files(output / event_name(event_id))


def _refuse_existing(output, event_ids) -> None:
    """Refuse to write over events already in ``output`` (``--overwrite`` allows it)."""
    from ..errors import InputError

    for event_id in event_ids:
        present = _event_files(output, event_id)
        if present:
            raise InputError(f"--output {output} already holds {present[0].name}; give another directory or "
                             "--first-event-id, or --overwrite to replace the events' files")


def _refuse_writing_over_particles(output: str, particles: str | None, event_ids: range) -> None:
    """Refuse an ``--output`` where an event's files would take the place of the ``--particles``
    table: each event is written as ``event<id>-<kind>.csv[.gz]`` there, and with ``--overwrite``
    every earlier file of the event, in either compression, is removed first."""
    from ..errors import InputError
    from ..events.event import SCHEMAS, event_name
    from ..paths import same_file

    if particles is None or not os.path.exists(particles):  # a missing table is the reader's to name
        return
    for source in (Path(particles), Path(particles).resolve()):  # the name given, and the file a link leads to
        match = re.fullmatch(r"event(\d+)-(\w+)\.csv(?:\.gz)?", source.name)
        if (match and match[2] in SCHEMAS and int(match[1]) in event_ids
                and f"event{match[1]}" == event_name(int(match[1])) and same_file(source.parent, output)):
            raise InputError(f"--output {output} would write over the --particles input {particles}; "
                             "write the events elsewhere")


def run(args: argparse.Namespace) -> int:
    """Simulate and write ``--events`` events, printing one summary line per event."""
    import numpy as np

    from ..errors import InputError
    from ..events.geometry import load_geometry
    from ..events.event import MAX_EVENT_ID
    from ..events.simulate import (SIMULATE_STREAM, check_seed, check_simulation_memory, read_simulation_particles,
                                   simulate_event)
    from ..events.trackml import write_event
    from ..paths import output_directory

    if args.events < 1:
        raise InputError(f"--events {args.events}: nothing would be simulated; give a number of events >= 1")
    if args.first_event_id < 0:
        raise InputError(f"--first-event-id {args.first_event_id} must be >= 0")
    if args.first_event_id + args.events - 1 > MAX_EVENT_ID:
        raise InputError(f"--first-event-id {args.first_event_id} with --events {args.events} gives event ids above "
                         f"{MAX_EVENT_ID}, the largest a TrackML file holds (a signed 64-bit integer)")
    check_seed(args.seed)
    config = _config(args)
    event_ids = range(args.first_event_id, args.first_event_id + args.events)
    _refuse_writing_over_particles(args.output, args.particles, event_ids)
    geometry = load_geometry(args.geometry)
    source = config if args.particles is None else read_simulation_particles(args.particles)
    check_simulation_memory(len(source["particle_id"]) if args.particles is not None else config.num_particles,
                            config.noise_fraction, noise_option="--noise-fraction")
    output = output_directory(args.output, "--output")
    if not args.overwrite:
        _refuse_existing(output, event_ids)
    for event_id in event_ids:
        start = time.perf_counter()
        event = simulate_event(geometry, source, seed=[args.seed, SIMULATE_STREAM, event_id], config=config,
                               event_id=event_id)
        elapsed = time.perf_counter() - start
        # with --overwrite none of the old files stays, and they stay until the new ones are in place
        written = write_event(event, output, compress=args.gzip, replace_other_compression=args.overwrite)
        noise = int(np.count_nonzero(event.truth["particle_id"] == 0))
        with_hits = int(np.count_nonzero(event.particles["nhits"] > 0))
        print(
            f"{event.name}: {event.num_hits} hits ({noise} noise), {len(event.particles['particle_id'])} particles "
            f"({with_hits} with hits), simulated in {elapsed:.2f} s -> {written['hits'].parent}"
        )
        if len(event.particles["particle_id"]) and not with_hits:
            print(f"trackserve simulate: note: none of the particles of {event.name} reached a detector module; "
                  "check the production point and field options (--vertex-sigma-xy, --vertex-sigma-z, "
                  "--vertex-offset-z, --magnetic-field, --pt-min, --eta-max)", file=sys.stderr)
    return 0
