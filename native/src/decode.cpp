// Decoding image files (see decode.h); the same steps as decode_image in preprocess.py.
#include "decode.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include <sys/stat.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "decoder_log.h"
#include "error.h"

namespace pmtiqa {

bool jpeg_is_complete(const unsigned char* data, size_t size) {
    size_t pos = 2;
    while (pos + 2 <= size) {
        if (data[pos] != 0xFF) return true;
        unsigned char marker = data[pos + 1];
        if (marker == 0xFF) {  // fill byte before a marker
            pos += 1;
            continue;
        }
        if (marker == 0xD9) return true;
        if ((marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) {  // markers without a length
            pos += 2;
            continue;
        }
        if (pos + 4 > size) return false;
        pos += 2 + ((size_t(data[pos + 2]) << 8) | data[pos + 3]);
        if (marker == 0xDA) {  // entropy-coded data up to the next marker that is not
                               // a stuffed zero, a restart marker or a fill byte
            size_t next = pos;
            bool found = false;
            for (; next + 1 < size; ++next) {
                unsigned char b = data[next + 1];
                if (data[next] == 0xFF && b != 0x00 && !(b >= 0xD0 && b <= 0xD7) && b != 0xFF) {
                    found = true;
                    break;
                }
            }
            if (!found) return false;
            pos = next;
        }
    }
    return false;
}

namespace {

// "; the decoder said: ..." for a failed decode, from decoding it again alone.
std::string said(const std::function<void()>& decode) {
    std::string words;
    for (const std::string& line : decoder_said(decode)) words += (words.empty() ? "" : "; ") + line;
    return words.empty() ? "" : "; the decoder said: " + words;
}

}  // namespace

cv::Mat decode_file(const std::string& path) {
    struct stat info {};
    if (::stat(path.c_str(), &info) != 0)
        fail(PMTIQA_ERROR_IO, path + ": cannot read file (" + std::strerror(errno) + ")");
    if (!S_ISREG(info.st_mode)) fail(PMTIQA_ERROR_IO, path + ": cannot read file (not a regular file)");
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(PMTIQA_ERROR_IO, path + ": cannot read file (" + std::strerror(errno) + ")");
    std::vector<unsigned char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) fail(PMTIQA_ERROR_IO, path + ": cannot read file");
    if (data.empty()) fail(PMTIQA_ERROR_DECODE, path + ": file is empty (0 bytes)");
    if (data.size() >= 2 && data[0] == 0xFF && data[1] == 0xD8 && !jpeg_is_complete(data.data(), data.size()))
        // libjpeg returns a grey-filled image for a truncated file and only warns.
        fail(PMTIQA_ERROR_DECODE, path + ": JPEG is truncated (no end-of-image marker); re-copy the file");
    cv::Mat image;
    auto decode = [&] { image = cv::imdecode(data, cv::IMREAD_COLOR | cv::IMREAD_ANYDEPTH); };
    try {
        decode_quietly(decode);  // OpenCV's, libpng's and libjpeg's messages stay off stderr
    } catch (const cv::Exception& exc) {
        fail(PMTIQA_ERROR_DECODE, path + ": not a readable image (" + exc.err + said(decode) +
                                      "); the header is corrupt or the image is larger than OpenCV's pixel limit");
    }
    if (image.empty()) {
        std::string words = said(decode);
        fail(PMTIQA_ERROR_DECODE, path + ": not a readable image (" +
                                      (words.empty() ? "unknown format or corrupt data" : "corrupt data" + words) + ")");
    }
    if (image.depth() == CV_16U) {
        image.convertTo(image, CV_8U, 1.0 / 257.0);
    } else if (image.depth() != CV_8U) {
        image.convertTo(image, CV_8U, 255.0);
    }
    cv::Mat rgb;
    cv::cvtColor(image, rgb, cv::COLOR_BGR2RGB);
    return rgb;
}

}  // namespace pmtiqa
