"""i-PI force client: an :class:`~mlip.calculators.ase_calculator.MLIPCalculator` behind i-PI's socket.

i-PI (https://ipi-code.org) runs the (path-integral) dynamics and sends, for each bead, the cell and
the positions; the client answers with the energy, the forces, the virial and a free-form ``extra``
string. The wire format and its unit conversions (Hartree, Bohr) are ASE's
:class:`ase.calculators.socketio.IPIProtocol`; this module adds what ASE's ``SocketClient`` does
not send: the model's tensor outputs (dipole, polarizability, …) as a JSON ``extra`` string, which
i-PI parses and can write per bead (``<trajectory extra_type="dipole"> extras </trajectory>``).

What is sent, per structure:

* energy (eV) and forces ``[N, 3]`` (eV/Å), converted by ASE to Hartree and Hartree/Bohr;
* virial ``[3, 3]`` (eV) ``= -V σ`` for cells periodic along all three axes, zeros otherwise
  (i-PI needs a virial from every client);
* ``extra``: ``{"dipole": [3 numbers], "polarizability": [[3], [3], [3]], ...}``, one entry per
  tensor target of the model in the model's own units (as trained, e.g. e·Å and Å³; per-atom
  targets as ``[N, ...]`` lists), the convention of i-PI's own ASE driver. A model without tensor
  targets sends a blank string, which i-PI reads as no extras.

Species, atom order and periodicity come from a template structure (i-PI sends neither); the cell
i-PI sends replaces the template's when the template is periodic along any axis.
"""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
from ase import Atoms
from ase.calculators.socketio import IPIProtocol, SocketClosed

from mlip.errors import MLIPError

SOCKET_PREFIX = "/tmp/ipi_"  # i-PI's default sockets_prefix: <address>NAME</address> is /tmp/ipi_NAME


def unix_socket_path(name: str) -> str:
    """The file of i-PI's unix socket ``name`` (``/tmp/ipi_NAME``); an absolute path is kept as is
    (for i-PI runs with another ``sockets_prefix``)."""
    return name if os.path.isabs(name) else SOCKET_PREFIX + name


def connect(
    unix: str | None = None, host: str = "localhost", port: int = 31415, wait: float = 60.0
) -> tuple[socket.socket, str]:
    """Connect to an i-PI server, retrying for up to ``wait`` seconds (i-PI may still be starting).

    Returns the connected socket and a description of the address (for messages).
    """
    if unix is not None:
        family, address, where = socket.AF_UNIX, unix_socket_path(unix), unix_socket_path(unix)
    else:
        family, address, where = socket.AF_INET, (host, port), f"{host}:{port}"
    deadline = time.monotonic() + max(wait, 0.0)
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.connect(address)
            return sock, where
        except OSError as err:
            sock.close()
            if time.monotonic() >= deadline:
                hint = f"the <ffsocket mode='unix'> address must be {unix}" if unix else "check host and port"
                reason = err.strerror or type(err).__name__
                raise MLIPError(
                    f"no i-PI server at {where} after waiting {wait:g} s ({reason}): start i-pi first; {hint}"
                ) from None
            time.sleep(0.2)


def virial(atoms: Atoms) -> np.ndarray:
    """``[3, 3]`` virial (eV): ``-V σ`` from the attached calculator for a cell periodic along all
    three axes, zeros otherwise (molecules, slabs)."""
    if not np.all(atoms.pbc):
        return np.zeros((3, 3))
    return -atoms.get_volume() * atoms.get_stress(voigt=False)


def extras_json(calc, atoms: Atoms) -> str:
    """The model's tensor outputs at ``atoms`` as a JSON object (model units), or ``" "`` if none."""
    extras = {name: np.asarray(calc.get_property(name, atoms)).tolist() for name in calc.tensor_names}
    return json.dumps(extras) if extras else " "


def run_client(sock: socket.socket, atoms: Atoms, max_steps: int | None = None) -> tuple[int, str]:
    """Answer i-PI's requests with ``atoms.calc`` until i-PI says EXIT, closes the connection, or
    ``max_steps`` force evaluations (one per bead per MD step) are done.

    ``atoms`` (the template, calculator attached) gets i-PI's positions and cell for each request.
    Returns ``(number of force evaluations, why the loop ended)``. The socket is closed on return.
    """
    protocol = IPIProtocol(sock)
    state, done = "READY", 0
    payload: tuple[float, np.ndarray, np.ndarray, np.ndarray] | None = None
    try:
        while max_steps is None or done < max_steps:
            try:
                msg = protocol.recvmsg()
            except SocketClosed:
                return done, "i-PI closed the connection"
            if msg == "EXIT":
                return done, "i-PI sent EXIT"
            if msg == "STATUS":
                protocol.sendmsg(state)
            elif msg == "INIT":
                protocol.recvinit()  # bead index and init string: not needed
                state = "READY"
            elif msg == "POSDATA":
                cell, _, positions = protocol.recvposdata()
                if len(positions) != len(atoms):
                    raise MLIPError(
                        f"i-PI sent {len(positions)} atoms but the template has {len(atoms)}: "
                        "use the structure i-PI was started with as --template"
                    )
                atoms.positions[:] = positions
                if np.any(atoms.pbc):
                    atoms.cell[:] = cell
                # One model evaluation: the first request (stress if periodic) computes every output.
                vir = virial(atoms)
                extras = np.frombuffer(extras_json(atoms.calc, atoms).encode(), dtype=np.byte)
                payload = (atoms.get_potential_energy(), atoms.get_forces(), vir, extras)
                state = "HAVEDATA"
            elif msg == "GETFORCE":
                if payload is None:
                    raise MLIPError("i-PI asked for forces before sending positions (protocol error)")
                energy, forces, vir, extras = payload
                protocol.sendforce(energy, forces, vir, morebytes=extras)
                payload, state, done = None, "READY", done + 1
            else:
                raise MLIPError(
                    f"i-PI sent {msg!r}, which this client does not handle "
                    "(use a plain <ffsocket>, without batch_size or shm mode)"
                )
        return done, f"--max-steps {max_steps} reached"
    except (BrokenPipeError, ConnectionResetError):
        return done, "i-PI closed the connection"
    finally:
        sock.close()
