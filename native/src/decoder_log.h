// What image decoders print, kept off the terminal and put to use: the C++ side of
// pmtiqa_deploy/decoder_log.py. OpenCV, libpng and libjpeg report a bad file by printing to
// the process's stderr (fd 2) in whatever thread decodes it. While a decode runs, fd 2
// points at a pipe whose reader thread forwards everything but those libraries' lines to
// the real stderr (the host program's own output still shows); before a decode call
// returns, the pipe is drained and fd 2 restored. A failed decode is run again alone to
// learn exactly what the decoders said. Where fd 2 cannot be duplicated, decodes run
// uncaptured; in a forked child, capture is off.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace pmtiqa {

// Run `decode` with the decoders' messages held back from stderr.
void decode_quietly(const std::function<void()>& decode);
// Run `decode` with no other decode in flight; the decoder lines it printed, without
// OpenCV's level, time and source location, each once.
std::vector<std::string> decoder_said(const std::function<void()>& decode);

}  // namespace pmtiqa
