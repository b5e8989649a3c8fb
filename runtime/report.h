/* runtime/report.h: reports a person looks at rather than reads: the training
 * curves of a metrics log and the VRA-against-radius curve of a
 * certification, drawn as SVG by gnuplot.
 *
 * Each report writes, next to OUT_PREFIX, its data, a gnuplot script that
 * draws it (both kept, so a user can edit and re-run them with
 * `gnuplot NAME.gp` in that directory) and the SVG. Without gnuplot the data
 * and the script are still written and d gets one warning; the call returns
 * LIPC_OK. $LIPC_GNUPLOT names another gnuplot program (a path, or a name
 * looked up in PATH).
 */
#ifndef LIPC_RUNTIME_REPORT_H
#define LIPC_RUNTIME_REPORT_H

#include "support/support.h"

/* Reads the JSON-lines metrics log at metrics_path (runtime/progress.c, one
 * record per epoch: "epoch", "loss", "acc", "cert" and "K_sub" required;
 * "step", "eps", "lr", "seconds", "val_acc", "val_vra" optional; null reads
 * as not recorded) and writes
 *   OUT_PREFIX-training.dat  one row per epoch, then the validation epochs
 *   OUT_PREFIX-training.gp   the script
 *   OUT_PREFIX-training.svg  four panels: loss; train and validation
 *                            accuracy; certified share (train) and VRA
 *                            (validation); K_sub, each against the epoch.
 * A record for an epoch at or below an earlier one (a run resumed from an
 * older checkpoint appends to the log) replaces the records from that epoch
 * on. Errors: a malformed line or a missing field is LIPC_ERR_INPUT with a
 * diagnostic at file:line (every bad line is reported, up to 10); a log with
 * no record is LIPC_ERR_INPUT; an unreadable log, an unwritable output or a
 * gnuplot that fails is LIPC_ERR_IO. */
lipc_status lipc_report_training(const char *metrics_path, const char *out_prefix,
                                 lipc_diags *d);

/* Writes OUT_PREFIX-vra.tsv (a header line "eps<TAB>vra", then one row per
 * radius in increasing order, led by the clean accuracy at eps 0 unless a
 * radius is 0 or clean is NaN), OUT_PREFIX-vra.gp and OUT_PREFIX-vra.svg.
 *   eps [n], vra [n]  the radii (finite, >= 0) and the VRA at each, in [0, 1]
 * LIPC_ERR_INPUT when a value is out of range; LIPC_ERR_IO as above. */
lipc_status lipc_report_vra(const double *eps, const double *vra, int n, double clean,
                            const char *out_prefix, lipc_diags *d);

/* The length of path without a trailing ".metrics.jsonl", ".jsonl" or
 * ".safetensors": the prefix for a report beside that file
 * ("runs/syn.metrics.jsonl" -> "runs/syn"). */
size_t lipc_report_stem(const char *path);

#endif
