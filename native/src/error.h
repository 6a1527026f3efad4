// The one exception type inside the library: a status code and a message that says what
// to do. api.cpp turns it (and every other exception) into a pmtiqa_status at the C
// boundary; nothing is thrown across it.
#pragma once

#include <stdexcept>
#include <string>

#include "pmtiqa.h"

namespace pmtiqa {

class Error : public std::runtime_error {
public:
    Error(pmtiqa_status status, const std::string& message)
        : std::runtime_error(message), status_(status) {}
    pmtiqa_status status() const noexcept { return status_; }

private:
    pmtiqa_status status_;
};

[[noreturn]] inline void fail(pmtiqa_status status, const std::string& message) {
    throw Error(status, message);
}

}  // namespace pmtiqa
