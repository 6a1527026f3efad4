// SHA-256 (FIPS 180-4), small and dependency-free: model files are checked against the
// digests model.json lists, as pmtiqa_deploy.spec.ModelSpec.verify_artifact does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace pmtiqa {

class Sha256 {
public:
    Sha256();
    void update(const void* data, size_t size);
    std::string hexdigest();  // finishes the hash; call once

private:
    void block(const uint8_t* chunk);
    uint32_t state_[8];
    uint8_t buffer_[64];
    size_t buffered_ = 0;
    uint64_t length_ = 0;
};

std::string sha256_hex(const void* data, size_t size);
// The digest of a file's bytes as lower-case hex; PMTIQA_ERROR_IO when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace pmtiqa
