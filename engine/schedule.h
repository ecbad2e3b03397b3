// Learning-rate schedule: the lr of each optimizer step, as transformers' schedulers give it.
//
// step s is 0-based: lr_at(t, s, N) is the lr used by the s-th update (HF calls scheduler.step()
// after optimizer.step(), so update s sees lambda(s); with warmup the first update uses lr 0).
// W = warmup_steps, N = total_steps, m = min_lr_ratio, lr = train.lr:
//
//   warmup (s < W):   lr * s / max(1, W)
//   after warmup:     lr * (m + (1 - m) * decay(p)),   p = min(1, (s - W) / max(1, N - W))
//     cosine:         decay(p) = 0.5 * (1 + cos(pi * p))   (get_cosine_schedule_with_warmup,
//                                                           num_cycles 0.5; with m: get_cosine_with_
//                                                           min_lr_schedule_with_warmup)
//     linear:         decay(p) = 1 - p                      (get_linear_schedule_with_warmup)
//     constant:       decay(p) = 1                          (get_constant_schedule(_with_warmup))
//
// m = 0 reproduces the transformers lambdas exactly for 0 <= s < N. p is clamped at 1, so steps
// past N keep the final lr (transformers' cosine would rise again there).
#pragma once
#include "engine/config.h"

namespace loom {

float lr_at(const TrainSection& t, int step, int total_steps);

}  // namespace loom
