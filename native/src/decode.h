// Image files to 8-bit RGB, as pmtiqa_deploy.preprocess.decode_image does it: OpenCV's
// imdecode (EXIF orientation applied, gray replicated, alpha dropped, CMYK converted),
// 16-bit samples scaled by 1/257 and rounded, truncated JPEGs rejected.
#pragma once

#include <string>

#include <opencv2/core.hpp>

namespace pmtiqa {

// PMTIQA_ERROR_IO when the file cannot be read, PMTIQA_ERROR_DECODE when it is empty,
// truncated or not an image OpenCV can read.
cv::Mat decode_file(const std::string& path);

// preprocess._jpeg_is_complete: whether a JPEG stream reaches its end-of-image marker.
bool jpeg_is_complete(const unsigned char* data, size_t size);

}  // namespace pmtiqa
