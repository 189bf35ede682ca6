// backend=gpu: a delegated partition run on one OpenCL device.  Tensors
// produced and consumed inside the partition stay in device memory; data
// crosses to the host only at the partition's edges (its inputs before the
// first op, its outputs after the last).
#ifndef COCOPIE_DELEGATE_GPU_PARTITION_H_
#define COCOPIE_DELEGATE_GPU_PARTITION_H_

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "cc/gpu/gpu_ops.h"
#include "delegate/delegate.h"
#include "delegate/ops.h"

namespace cocopie {

class GpuPartition {
 public:
  // Generates and builds each op's program and allocates its buffers, for
  // the shapes ResolveShapes set; fills the report entries.  Returns an
  // error message or "".
  std::string Prepare(Delegate* d, const TfLiteContext* ctx, const std::vector<OpPlan>& ops,
                      const std::set<int>& outputs, std::map<int, ReportEntry>* entries);
  // Runs the partition; with profiling, adds each op's device time to
  // *ms_by_node.  Returns an error message or "".
  std::string Invoke(Delegate* d, TfLiteContext* ctx, const std::vector<OpPlan>& ops,
                     std::map<int, double>* ms_by_node);

 private:
  std::vector<std::unique_ptr<gpu::Op>> ops_;
  std::map<int, gpu::Buffer> tensors_;  // by tensor index, NHWC float32
  std::map<int, size_t> bytes_;
  std::vector<int> uploads_, downloads_;
};

}  // namespace cocopie

#endif  // COCOPIE_DELEGATE_GPU_PARTITION_H_
