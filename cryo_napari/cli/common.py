"""Argument groups shared by subcommands (one definition, used by the CLI and the GUI forms)."""

from __future__ import annotations

from cryo_napari.io.particles import load_particles


def add_particle_args(p):
    """Particle input: a .star, .cs, or stack with cryoDRGN pkls; ``--ind``; ``--datadir``."""
    p.add_argument("particles", help="particles: .star, .cs, or .mrcs/.txt stack (then give --poses, --ctf)")
    p.add_argument("--poses", help="cryoDRGN poses.pkl (overrides poses in the particle file)")
    p.add_argument("--ctf", help="cryoDRGN ctf.pkl (for stacks)")
    p.add_argument("--ind", help="particle indices to use (.npy, .pkl, or text)")
    p.add_argument("--datadir", help="directory to find image stacks named in the particle file")


def load_particles_from_args(args, require_poses=False):
    return load_particles(args.particles, datadir=args.datadir, poses=args.poses, ctf=args.ctf,
                          ind=args.ind, require_poses=require_poses)
