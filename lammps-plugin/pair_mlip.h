/* -*- c++ -*-
   SPDX-License-Identifier: GPL-2.0-only

   pair_style mlip: runs an mlip model exported by `mlip export --aoti` (an AOTInductor
   package, .pt2) inside LAMMPS. Part of the mlip LAMMPS plugin; see README.md in this folder.
   This file is licensed under the GNU General Public License version 2 (LICENSE in this folder),
   because it is compiled against and linked with LAMMPS.
*/

#ifdef PAIR_CLASS
// clang-format off
PairStyle(mlip,PairMLIP);
// clang-format on
#else

#ifndef LMP_PAIR_MLIP_H
#define LMP_PAIR_MLIP_H

#include "pair.h"

#include <memory>
#include <string>
#include <vector>

namespace torch {
namespace inductor {
class AOTIModelPackageLoader;
}
}    // namespace torch

namespace LAMMPS_NS {

class PairMLIP : public Pair {
 public:
  PairMLIP(class LAMMPS *);
  ~PairMLIP() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;
  double memory_usage() override;

 protected:
  // How ghost atoms enter the graph (README.md, "Ghost atoms"):
  //  FOLD:  one MPI rank; a ghost neighbour is replaced by the local atom it is an image of
  //         (its edge vector keeps the image position), so the graph has the local atoms only;
  //  SHELL: local atoms, then ghost atoms up to num_layers x cutoff + skin, edges of atoms
  //         within (num_layers - 1) x cutoff + skin of the sub-domain; forces on ghosts are
  //         sent back to their owners.
  enum GhostMode { AUTO, FOLD, SHELL };

  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> model;
  std::string model_path;
  double cutoff;                  // Å, from the package metadata
  int num_layers;                 // message-passing layers, from the metadata
  bool float64;                   // dtype of the exported program
  std::vector<long> species;      // atomic numbers the model knows
  std::vector<long> type2z;       // atomic number per LAMMPS type (index 1..ntypes), 0 = NULL
  int ghost_request;              // what the user asked for: AUTO, FOLD or SHELL
  int ghost_mode;                 // what is used: FOLD or SHELL

  double **fghost;    // SHELL mode: forces on ghost atoms (and reverse-communicated sums)
  int nmax_fghost;

  std::vector<int> tag2local;    // FOLD mode: atom ID -> local index

  // per-step work buffers (kept to avoid reallocation)
  std::vector<int> node_atom, atom_node, edge_i, edge_j;
  std::vector<long> node_species;
  std::vector<double> edge_vec;

  virtual void allocate();
  void build_graph_fold();
  void build_graph_shell();
  void number_local_atoms();
  void add_edge(int i, int j, double dx, double dy, double dz);
};

}    // namespace LAMMPS_NS

#endif
#endif
