// CPrefetch is a header-only module (see include/CPrefetch.h); SwiftPM builds a C target
// only when it has a source file.
#include "CPrefetch.h"
