// See decoder_log.h; the same splitting rules as pmtiqa_deploy/decoder_log.py.
#include "decoder_log.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <regex>
#include <thread>

#include <pthread.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "decoder_prefixes.h"

namespace pmtiqa {
namespace {

const std::string kMarker = "\x01pmtiqa-sync-";  // written by sync(), never forwarded

// pmtiqa_deploy/decoder_prefixes.json's list (how OpenCV's log, libpng's default handlers
// and libjpeg's warnings begin a line), and the marker.
const std::vector<std::string>& prefixes() {
    static const std::vector<std::string> all = [] {
        std::vector<std::string> list = nlohmann::json::parse(kDecoderPrefixesJson).at("prefixes");
        list.push_back(kMarker);
        return list;
    }();
    return all;
}

size_t first_start(const std::string& data, size_t from = 0) {
    size_t best = std::string::npos;
    for (const std::string& prefix : prefixes()) best = std::min(best, data.find(prefix, from));
    return best;
}

// The length of the longest end of `data` that could begin a decoder line.
size_t partial_start(const std::string& data) {
    size_t longest = 0;
    for (const std::string& prefix : prefixes()) longest = std::max(longest, prefix.size());
    for (size_t size = std::min(data.size(), longest - 1); size > 0; --size)
        for (const std::string& prefix : prefixes())
            if (prefix.compare(0, size, data, data.size() - size, size) == 0) return size;
    return 0;
}

void write_all(int fd, const char* data, size_t size) {
    while (size > 0) {
        ssize_t done = ::write(fd, data, size);
        if (done < 0 && errno == EINTR) continue;
        if (done <= 0) return;  // the real stderr is gone: nothing can be shown anyway
        data += done;
        size -= static_cast<size_t>(done);
    }
}

class Capture {
public:
    void enter(bool alone) {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [&] { return !closing_ && !alone_ && !(alone && active_ > 0); });
        if (active_ == 0 && !broken_) open_window();
        ++active_;
        alone_ = alone;
    }

    void leave() {
        std::unique_lock<std::mutex> lock(mutex_);
        --active_;
        alone_ = false;
        if (active_ == 0 && stderr_ >= 0) {
            closing_ = true;  // no new window until this one is drained and closed
            ::dup2(stderr_, 2);
            sync(lock);  // everything forwarded before the caller goes on
            ::close(stderr_);
            stderr_ = -1;
            closing_ = false;
        }
        changed_.notify_all();
    }

    void record(bool on) {
        std::unique_lock<std::mutex> lock(mutex_);
        if (on) sync(lock);  // what earlier decodes said is still in the pipe: not ours
        recording_ = on;
        if (on) recorded_.clear();
    }

    std::vector<std::string> recorded() {
        std::unique_lock<std::mutex> lock(mutex_);
        sync(lock);
        return recorded_;
    }

    void forked_child() {  // no reader thread here: the real stderr back, capture off
        if (active_ > 0 && stderr_ >= 0) ::dup2(stderr_, 2);
        broken_ = true;
    }

private:
    void open_window() {
        stderr_ = ::dup(2);
        if (stderr_ < 0) {
            broken_ = true;
            return;
        }
        if (pipe_[1] < 0) {
            if (::pipe(pipe_) != 0) {
                ::close(stderr_);
                stderr_ = -1;
                broken_ = true;
                return;
            }
            std::thread([this] { pump(); }).detach();
        }
        ::dup2(pipe_[1], 2);
    }

    // Wait (holding `lock` between waits) until the reader has handled all written so far.
    void sync(std::unique_lock<std::mutex>& lock) {
        if (pipe_[1] < 0) return;
        unsigned long number = ++markers_;
        std::string marker = kMarker + std::to_string(number) + "\n";
        write_all(pipe_[1], marker.data(), marker.size());
        changed_.wait_for(lock, std::chrono::seconds(10), [&] { return seen_ >= number; });
    }

    void pump() {
        std::string pending;
        char chunk[65536];
        for (;;) {
            ssize_t got = ::read(pipe_[0], chunk, sizeof chunk);
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) return;
            pending = split(pending + std::string(chunk, static_cast<size_t>(got)));
        }
    }

    // Hold back decoder lines, forward the rest at once; the tail that may still become one.
    std::string split(std::string data) {
        while (!data.empty()) {
            if (owed_ > 0 && data[0] == '\n') {
                data.erase(0, 1);
                --owed_;
                continue;
            }
            size_t start = first_start(data);
            if (start == std::string::npos) {
                size_t keep = partial_start(data);
                forward(data.substr(0, data.size() - keep));
                return data.substr(data.size() - keep);
            }
            forward(data.substr(0, start));
            size_t end = data.find('\n', start), following = first_start(data, start + 1);
            if (following != std::string::npos && (end == std::string::npos || following < end)) {
                // libpng writes its message and its newline separately, so another thread's
                // line can come between them: the newline is still owed.
                route(data.substr(start, following - start));
                data.erase(0, following);
                ++owed_;
                continue;
            }
            if (end == std::string::npos) return data.substr(start);
            route(data.substr(start, end - start));
            data.erase(0, end + 1);
        }
        return "";
    }

    void route(const std::string& line) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (line.rfind(kMarker, 0) == 0) {
            seen_ = std::stoul(line.substr(kMarker.size()));
            changed_.notify_all();
        } else if (recording_) {
            recorded_.push_back(line);
        }
    }

    void forward(const std::string& data) {
        if (data.empty()) return;
        int target;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            target = stderr_;
        }
        if (target >= 0) write_all(target, data.data(), data.size());
    }

    std::mutex mutex_;
    std::condition_variable changed_;
    int active_ = 0;
    bool alone_ = false, broken_ = false, recording_ = false, closing_ = false;
    int pipe_[2] = {-1, -1};
    int stderr_ = -1;  // the real stderr, duplicated, while a window is open
    unsigned long markers_ = 0, seen_ = 0;
    size_t owed_ = 0;  // newlines of decoder lines cut short by another decoder line
    std::vector<std::string> recorded_;
};

Capture& capture() {
    static Capture* instance = [] {
        auto* made = new Capture();  // never destroyed: its reader thread outlives main
        pthread_atfork(nullptr, nullptr, [] { capture().forked_child(); });
        return made;
    }();
    return *instance;
}

// OpenCV's "[ WARN:0@0.019] global .../grfmt_png.cpp (792) readFromStreamOrBuffer " before its words.
std::string plain(const std::string& line) {
    static const std::regex head(R"(^\[[^\]]*\]\s+(global\s+)?\S+\s+(\(\d+\)\s+)?\S+\s+)");
    std::string text = std::regex_replace(line, head, "");
    size_t last = text.find_last_not_of(" \t\r\n");
    return last == std::string::npos ? "" : text.substr(0, last + 1);
}

}  // namespace

void decode_quietly(const std::function<void()>& decode) {
    Capture& c = capture();
    c.enter(false);
    try {
        decode();
    } catch (...) {
        c.leave();
        throw;
    }
    c.leave();
}

std::vector<std::string> decoder_said(const std::function<void()>& decode) {
    Capture& c = capture();
    c.enter(true);
    std::vector<std::string> lines;
    c.record(true);
    try {
        decode();
    } catch (...) {  // the caller decoded these bytes already and has its error
    }
    lines = c.recorded();
    c.record(false);
    c.leave();
    std::vector<std::string> said;
    for (const std::string& line : lines) {
        std::string text = plain(line);
        if (!text.empty() && std::find(said.begin(), said.end(), text) == said.end()) said.push_back(text);
    }
    return said;
}

}  // namespace pmtiqa
