/*
   SPDX-License-Identifier: GPL-2.0-only

   pair_style mlip: runs an mlip model exported by `mlip export --aoti` (an AOTInductor
   package, .pt2) inside LAMMPS. See README.md in this folder for usage and design.
   Licensed under the GNU General Public License version 2 (LICENSE in this folder).

   The exported program (mlip/model/export.py states the contract):

     atomic_energies [N], edge_forces [E,3] = program(species [N] int64 atomic numbers,
         edge_index [2,E] int64 (row 0 receiving atom i, row 1 neighbour j),
         edge_vectors [E,3] (r_j - r_i, Angstrom, exported dtype), n_local [] int64)

   atomic_energies are in eV for the first n_local atoms (0 for the others); edge_forces are
   dE_local/dr_e. Forces: F_i += g_e, F_j -= g_e; virial W = -sum_e r_e (x) g_e.
*/

#include "pair_mlip.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

using namespace LAMMPS_NS;

namespace {

const char *const ELEMENTS[] = {
    "X",  "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si",
    "P",  "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu",
    "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru",
    "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr",
    "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",
    "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac",
    "Th", "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf",
    "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};
const int NUM_ELEMENTS = sizeof(ELEMENTS) / sizeof(ELEMENTS[0]);

int atomic_number(const std::string &symbol)
{
  for (int z = 1; z < NUM_ELEMENTS; z++)
    if (symbol == ELEMENTS[z]) return z;
  return 0;
}

std::string element_list(const std::vector<long> &species)
{
  std::string out;
  for (long z : species) {
    if (!out.empty()) out += " ";
    out += (z > 0 && z < NUM_ELEMENTS) ? ELEMENTS[z] : std::to_string(z);
  }
  return out;
}

// first line of an exception message: LAMMPS error messages are one line
std::string first_line(const std::string &text)
{
  std::string line = text.substr(0, text.find('\n'));
  return line.empty() ? std::string("unknown error") : line;
}

}    // namespace

/* ---------------------------------------------------------------------- */

PairMLIP::PairMLIP(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  unit_convert_flag = 0;
  no_virial_fdotr_compute = 1;    // virial summed from the edge forces (exact in both modes)
  centroidstressflag = CENTROID_NOTAVAIL;
  comm_reverse = 3;        // SHELL mode: forces on ghosts ...
  comm_reverse_off = 3;    // ... sent back by this pair style also with newton off

  cutoff = 0.0;
  num_layers = 0;
  float64 = true;
  ghost_request = AUTO;
  ghost_mode = FOLD;
  fghost = nullptr;
  nmax_fghost = 0;
}

PairMLIP::~PairMLIP()
{
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
  memory->destroy(fghost);
}

void PairMLIP::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  memory->create(cutghost, n, n, "pair:cutghost");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
  type2z.assign(n, 0);
}

/* ----------------------------------------------------------------------
   pair_style mlip MODEL.pt2 [ghosts auto|fold|shell]
------------------------------------------------------------------------- */

void PairMLIP::settings(int narg, char **arg)
{
  if (narg != 1 && narg != 3)
    error->all(FLERR, "Illegal pair_style mlip command: expected 'pair_style mlip MODEL.pt2 "
                      "[ghosts auto|fold|shell]'");
  ghost_request = AUTO;
  if (narg == 3) {
    if (strcmp(arg[1], "ghosts") != 0)
      error->all(FLERR, "pair_style mlip: unknown keyword '{}' (expected 'ghosts')", arg[1]);
    if (strcmp(arg[2], "auto") == 0)
      ghost_request = AUTO;
    else if (strcmp(arg[2], "fold") == 0)
      ghost_request = FOLD;
    else if (strcmp(arg[2], "shell") == 0)
      ghost_request = SHELL;
    else
      error->all(FLERR, "pair_style mlip: ghosts must be auto, fold or shell, got '{}'", arg[2]);
  }

  model_path = arg[0];
  {
    std::ifstream probe(model_path, std::ios::binary);
    if (!probe.good())
      error->all(FLERR, "pair_style mlip: cannot read model file '{}' (file not found or not readable)",
                 model_path);
  }
  std::unordered_map<std::string, std::string> meta;
  try {
    model.reset();
    model = std::make_unique<torch::inductor::AOTIModelPackageLoader>(model_path);
    meta = model->get_metadata();
  } catch (const std::exception &e) {
    model.reset();
    error->all(FLERR, "pair_style mlip: cannot load '{}' as an AOTInductor package (write it with "
                      "'mlip export MODEL -o {} --aoti'): {}",
               model_path, model_path, first_line(e.what()));
  }
  auto get = [&](const std::string &key) -> std::string {
    auto it = meta.find("mlip_" + key);
    if (it == meta.end())
      error->all(FLERR, "pair_style mlip: '{}' has no mlip metadata '{}' (not written by 'mlip export "
                        "--aoti')", model_path, "mlip_" + key);
    return it->second;
  };
  if (get("format") != "mlip-export")
    error->all(FLERR, "pair_style mlip: '{}' is not an mlip export", model_path);
  if (get("format_version") != "1")
    error->all(FLERR, "pair_style mlip: '{}' has export format version {}, this plugin reads 1",
               model_path, get("format_version"));
  try {
    cutoff = std::stod(get("cutoff"));
    num_layers = std::stoi(get("num_layers"));
  } catch (const std::exception &) {
    error->all(FLERR, "pair_style mlip: '{}' has unreadable cutoff or num_layers metadata", model_path);
  }
  if (!(cutoff > 0.0) || num_layers < 1)
    error->all(FLERR, "pair_style mlip: '{}' has invalid cutoff {} or num_layers {}", model_path,
               cutoff, num_layers);
  std::string dtype = get("dtype");
  if (dtype != "float32" && dtype != "float64")
    error->all(FLERR, "pair_style mlip: '{}' has unknown dtype '{}'", model_path, dtype);
  float64 = dtype == "float64";
  species.clear();
  std::istringstream words(get("species"));
  long z;
  while (words >> z) species.push_back(z);
  if (species.empty()) error->all(FLERR, "pair_style mlip: '{}' lists no elements", model_path);

  if (ghost_request == FOLD && comm->nprocs > 1)
    error->all(FLERR, "pair_style mlip: 'ghosts fold' needs a single MPI rank (use 'ghosts shell' or "
                      "'ghosts auto' with {} ranks)", comm->nprocs);
  ghost_mode = ghost_request == AUTO ? (comm->nprocs == 1 ? FOLD : SHELL) : ghost_request;
  ghostneigh = ghost_mode == SHELL ? 1 : 0;

  if (comm->me == 0)
    utils::logmesg(lmp,
                   "pair_style mlip: {} ({}, cutoff {} A, {} layers, elements {}), ghosts {}\n",
                   model_path, dtype, cutoff, num_layers, element_list(species),
                   ghost_mode == FOLD ? "fold" : "shell");
}

/* ----------------------------------------------------------------------
   pair_coeff * * SYMBOL_1 ... SYMBOL_ntypes (NULL: the type is not handled by mlip)
------------------------------------------------------------------------- */

void PairMLIP::coeff(int narg, char **arg)
{
  if (!model) error->all(FLERR, "pair_style mlip: pair_coeff before a model was loaded");
  if (!allocated) allocate();
  int ntypes = atom->ntypes;
  if (narg != 2 + ntypes)
    error->all(FLERR, "pair_coeff for mlip: expected '* *' and {} element symbols (one per atom "
                      "type), got {} arguments", ntypes, narg);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for mlip: the first two arguments must be '* *'");

  for (int t = 1; t <= ntypes; t++) {
    std::string symbol = arg[1 + t];
    if (symbol == "NULL") {
      type2z[t] = 0;
      continue;
    }
    int znum = atomic_number(symbol);
    if (znum == 0)
      error->all(FLERR, "pair_coeff for mlip: '{}' (type {}) is not an element symbol", symbol, t);
    if (std::find(species.begin(), species.end(), (long) znum) == species.end())
      error->all(FLERR, "pair_coeff for mlip: element {} (type {}) is not in the model (elements: {})",
                 symbol, t, element_list(species));
    type2z[t] = znum;
  }
  int count = 0;
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) {
      setflag[i][j] = (type2z[i] > 0 && type2z[j] > 0) ? 1 : 0;
      if (setflag[i][j]) count++;
    }
  if (count == 0) error->all(FLERR, "pair_coeff for mlip: every type is NULL");
}

/* ---------------------------------------------------------------------- */

void PairMLIP::init_style()
{
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair_style mlip requires 'units metal' (eV, Angstrom), got units {}",
               update->unit_style);
  if (domain->dimension != 3) error->all(FLERR, "pair_style mlip requires a 3d simulation");
  if (!model) error->all(FLERR, "pair_style mlip: no model loaded");

  if (ghost_mode == FOLD) {
    if (comm->nprocs > 1)
      error->all(FLERR, "pair_style mlip: 'ghosts fold' needs a single MPI rank");
    if (!atom->tag_enable)
      error->all(FLERR, "pair_style mlip requires atom IDs (atom_modify id yes) on one rank");
    neighbor->add_request(this, NeighConst::REQ_FULL);
  } else {
    // every atom within num_layers x cutoff of a local atom must be present as a ghost; the skin
    // covers the motion between neighbour-list builds (ghosts are found at rebuilds only)
    if (comm->mode != Comm::SINGLE)
      error->all(FLERR, "pair_style mlip requires comm_modify mode single");
    double need = num_layers * cutoff + neighbor->skin;
    if (comm->cutghostuser < need) {
      comm->cutghostuser = need;
      if (comm->me == 0)
        utils::logmesg(lmp,
                       "pair_style mlip: ghost cutoff set to {:.4g} A ({} layers x {:.4g} A cutoff + "
                       "{:.4g} A skin)\n",
                       need, num_layers, cutoff, neighbor->skin);
    }
    neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);
  }
}

double PairMLIP::init_one(int i, int j)
{
  if (setflag[i][j] == 0) error->all(FLERR, "All pair coeffs are not set");
  if (ghostneigh) cutghost[i][j] = cutghost[j][i] = cutoff;
  return cutoff;
}

/* ----------------------------------------------------------------------
   graph nodes 0.. for the local atoms of mlip types (node_atom, node_species, atom_node), and
   one edge i -> j with vector r_j - r_i (both graph builders)
------------------------------------------------------------------------- */

void PairMLIP::number_local_atoms()
{
  int *type = atom->type;
  node_atom.clear();
  node_species.clear();
  for (int i = 0; i < atom->nlocal; i++) {
    long z = type2z[type[i]];
    if (z == 0) continue;
    atom_node[i] = (int) node_atom.size();
    node_atom.push_back(i);
    node_species.push_back(z);
  }
}

void PairMLIP::add_edge(int i, int j, double dx, double dy, double dz)
{
  edge_i.push_back(i);
  edge_j.push_back(j);
  edge_vec.push_back(dx);
  edge_vec.push_back(dy);
  edge_vec.push_back(dz);
}

/* ----------------------------------------------------------------------
   FOLD: one rank, local atoms only; a ghost neighbour j becomes its owner (by atom ID), the edge
   vector keeps the image's position. This is the periodic graph of the whole system.
------------------------------------------------------------------------- */

void PairMLIP::build_graph_fold()
{
  int nlocal = atom->nlocal;
  int nall = nlocal + atom->nghost;
  double **x = atom->x;
  int *type = atom->type;
  tagint *tag = atom->tag;

  tagint maxtag = 0;
  for (int i = 0; i < nlocal; i++) maxtag = std::max(maxtag, tag[i]);
  tag2local.assign(maxtag + 1, -1);
  for (int i = 0; i < nlocal; i++) tag2local[tag[i]] = i;

  atom_node.assign(nall, -1);
  number_local_atoms();

  edge_i.clear();
  edge_j.clear();
  edge_vec.clear();
  double cutsq_model = cutoff * cutoff;
  for (int ii = 0; ii < list->inum; ii++) {
    int i = list->ilist[ii];
    if (atom_node[i] < 0) continue;
    int *jlist = list->firstneigh[i];
    int jnum = list->numneigh[i];
    for (int jj = 0; jj < jnum; jj++) {
      int j = jlist[jj] & NEIGHMASK;
      if (type2z[type[j]] == 0) continue;
      double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      double rsq = dx * dx + dy * dy + dz * dz;
      if (rsq >= cutsq_model) continue;
      int owner = j;
      if (j >= nlocal) {
        owner = (tag[j] >= 0 && tag[j] <= maxtag) ? tag2local[tag[j]] : -1;
        if (owner < 0) error->one(FLERR, "pair_style mlip: ghost atom {} has no local owner", tag[j]);
      }
      add_edge(i, owner, dx, dy, dz);
    }
  }
}

/* ----------------------------------------------------------------------
   SHELL: local atoms first, then the ghosts the graph needs. Edges (from the full neighbour list
   of local and ghost atoms) of every atom within (num_layers - 1) x cutoff + skin of this
   sub-domain (all atoms for triclinic boxes); ghosts farther out only act as neighbours.
------------------------------------------------------------------------- */

void PairMLIP::build_graph_shell()
{
  int nlocal = atom->nlocal;
  int nall = nlocal + atom->nghost;
  double **x = atom->x;
  int *type = atom->type;

  double margin = (num_layers - 1) * cutoff + neighbor->skin;
  bool prune = !domain->triclinic;
  const double *lo = domain->sublo, *hi = domain->subhi;
  auto near_domain = [&](int i) {
    if (!prune) return true;
    double d2 = 0.0;
    for (int k = 0; k < 3; k++) {
      double d = std::max(std::max(lo[k] - x[i][k], x[i][k] - hi[k]), 0.0);
      d2 += d * d;
    }
    return d2 <= margin * margin;
  };

  atom_node.assign(nall, -1);    // first pass: 1 marks a ghost the graph needs
  edge_i.clear();
  edge_j.clear();
  edge_vec.clear();
  double cutsq_model = cutoff * cutoff;
  int nlist = list->inum + list->gnum;
  for (int ii = 0; ii < nlist; ii++) {
    int i = list->ilist[ii];
    if (type2z[type[i]] == 0) continue;
    if (i >= nlocal && !near_domain(i)) continue;
    int *jlist = list->firstneigh[i];
    int jnum = list->numneigh[i];
    for (int jj = 0; jj < jnum; jj++) {
      int j = jlist[jj] & NEIGHMASK;
      if (type2z[type[j]] == 0) continue;
      double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      double rsq = dx * dx + dy * dy + dz * dz;
      if (rsq >= cutsq_model) continue;
      add_edge(i, j, dx, dy, dz);
      if (i >= nlocal) atom_node[i] = 1;
      if (j >= nlocal) atom_node[j] = 1;
    }
  }

  number_local_atoms();    // every local atom (isolated ones have their E0)
  for (int i = nlocal; i < nall; i++) {
    if (atom_node[i] != 1) {
      atom_node[i] = -1;
      continue;
    }
    atom_node[i] = (int) node_atom.size();
    node_atom.push_back(i);
    node_species.push_back(type2z[type[i]]);
  }
}

/* ---------------------------------------------------------------------- */

void PairMLIP::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  if (vflag_atom || cvflag_atom)
    error->all(FLERR, "pair_style mlip does not compute per-atom virials (compute stress/atom)");

  int nlocal = atom->nlocal;
  int nall = nlocal + atom->nghost;
  bool shell = ghost_mode == SHELL;

  if (shell) {
    if (atom->nmax > nmax_fghost) {
      memory->destroy(fghost);
      nmax_fghost = atom->nmax;
      memory->create(fghost, nmax_fghost, 3, "pair:fghost");
    }
    for (int i = 0; i < nall; i++) fghost[i][0] = fghost[i][1] = fghost[i][2] = 0.0;
    build_graph_shell();
  } else {
    build_graph_fold();
  }

  long n_local = 0;
  for (int atom_index : node_atom)
    if (atom_index < nlocal) n_local++;
  long n_nodes = (long) node_atom.size();
  long n_edges = (long) edge_i.size();

  if (n_nodes > 0) {
    // the program wants N >= 2 and E >= 2: pad with a ghost far from everything, joined to itself
    // by two edges longer than the cutoff (they contribute exactly zero)
    bool pad = n_nodes < 2 || n_edges < 2;
    long n_in = n_nodes + (pad ? 1 : 0);
    long e_in = n_edges + (pad ? 2 : 0);

    auto long_opts = at::TensorOptions().dtype(at::kLong);
    at::Tensor t_species = at::empty({n_in}, long_opts);
    at::Tensor t_edges = at::empty({2, e_in}, long_opts);
    at::Tensor t_vectors = at::empty({e_in, 3}, at::TensorOptions().dtype(at::kDouble));
    int64_t *sp = t_species.data_ptr<int64_t>();
    int64_t *ei = t_edges.data_ptr<int64_t>();
    double *ev = t_vectors.data_ptr<double>();
    for (long k = 0; k < n_nodes; k++) sp[k] = node_species[k];
    for (long e = 0; e < n_edges; e++) {
      ei[e] = atom_node[edge_i[e]];
      ei[e_in + e] = atom_node[edge_j[e]];
      for (int k = 0; k < 3; k++) ev[3 * e + k] = edge_vec[3 * e + k];
    }
    if (pad) {
      sp[n_nodes] = species[0];
      for (long e = n_edges; e < e_in; e++) {
        ei[e] = ei[e_in + e] = n_nodes;
        ev[3 * e] = (e == n_edges ? 3.0 : -3.0) * cutoff;
        ev[3 * e + 1] = ev[3 * e + 2] = 0.0;
      }
    }
    at::Tensor t_nlocal = at::scalar_tensor((int64_t) n_local, long_opts);
    if (!float64) t_vectors = t_vectors.to(at::kFloat);

    std::vector<at::Tensor> outputs;
    try {
      outputs = model->run({t_species, t_edges, t_vectors, t_nlocal});
    } catch (const std::exception &e) {
      error->one(FLERR, "pair_style mlip: the model failed on {} atoms and {} edges: {}", n_in, e_in,
                 first_line(e.what()));
    }
    if (outputs.size() != 2)
      error->one(FLERR, "pair_style mlip: the model returned {} outputs, expected 2", outputs.size());
    at::Tensor energies = outputs[0].to(at::kDouble).contiguous();
    at::Tensor edge_forces = outputs[1].to(at::kDouble).contiguous();
    const double *en = energies.data_ptr<double>();
    const double *g = edge_forces.data_ptr<double>();

    if (eflag_either) {
      for (long k = 0; k < n_local; k++) {
        if (eflag_global) eng_vdwl += en[k];
        if (eflag_atom) eatom[node_atom[k]] += en[k];
      }
    }

    double **f = atom->f;
    bool newton = force->newton_pair != 0;
    double w[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    for (long e = 0; e < n_edges; e++) {
      int i = edge_i[e], j = edge_j[e];
      const double *ge = g + 3 * e;
      // with newton off, LAMMPS does not send ghost forces back: keep them in fghost and send
      // them with this pair style's reverse communication below
      double *fi = (i < nlocal || (shell && newton)) ? f[i] : fghost[i];
      double *fj = (j < nlocal || (shell && newton)) ? f[j] : fghost[j];
      fi[0] += ge[0];
      fi[1] += ge[1];
      fi[2] += ge[2];
      fj[0] -= ge[0];
      fj[1] -= ge[1];
      fj[2] -= ge[2];
      if (vflag_global) {
        const double *r = &edge_vec[3 * e];
        w[0] -= r[0] * ge[0];
        w[1] -= r[1] * ge[1];
        w[2] -= r[2] * ge[2];
        w[3] -= r[0] * ge[1];
        w[4] -= r[0] * ge[2];
        w[5] -= r[1] * ge[2];
      }
    }
    if (vflag_global)
      for (int k = 0; k < 6; k++) virial[k] += w[k];
  }

  if (shell && !force->newton_pair) {
    comm->reverse_comm(this);
    double **f = atom->f;
    for (int i = 0; i < nlocal; i++) {
      f[i][0] += fghost[i][0];
      f[i][1] += fghost[i][1];
      f[i][2] += fghost[i][2];
    }
  }
}

/* ---------------------------------------------------------------------- */

int PairMLIP::pack_reverse_comm(int n, int first, double *buf)
{
  int m = 0;
  for (int i = first; i < first + n; i++) {
    buf[m++] = fghost[i][0];
    buf[m++] = fghost[i][1];
    buf[m++] = fghost[i][2];
  }
  return m;
}

void PairMLIP::unpack_reverse_comm(int n, int *list_, double *buf)
{
  int m = 0;
  for (int i = 0; i < n; i++) {
    int j = list_[i];
    fghost[j][0] += buf[m++];
    fghost[j][1] += buf[m++];
    fghost[j][2] += buf[m++];
  }
}

double PairMLIP::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += (double) nmax_fghost * 3 * sizeof(double);
  bytes += (double) (node_atom.capacity() + atom_node.capacity() + edge_i.capacity() +
                     edge_j.capacity() + tag2local.capacity()) * sizeof(int);
  bytes += (double) node_species.capacity() * sizeof(long);
  bytes += (double) edge_vec.capacity() * sizeof(double);
  return bytes;
}
