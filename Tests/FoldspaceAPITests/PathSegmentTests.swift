import Testing

@testable import FoldspaceAPI

/// A user's id as one path segment of `/v1/user/{identifyId}`.
@Suite struct PathSegmentTests {
    @Test(arguments: ["plain", "a/b", "../etc/passwd", "%2F", "a?b#c", "sp ace", "José", "line\r\nX-Injected: 1", ".", ".."])
    func pathSegmentEncoding(id: String) {
        let enc = encodePathSegment(id)
        #expect(!enc.contains("/") && !enc.contains("?") && !enc.contains("#") && !enc.contains(" "))
        #expect(!enc.contains("\r") && !enc.contains("\n"))
        #expect(enc != "." && enc != "..")
        #expect(enc.removingPercentEncodingForTest() == id)
    }
}

extension String {
    func removingPercentEncodingForTest() -> String {
        var out: [UInt8] = []
        var it = Array(utf8)[...]
        while let b = it.popFirst() {
            if b == UInt8(ascii: "%"), let h = it.popFirst(), let l = it.popFirst() {
                out.append(UInt8(String(decoding: [h, l], as: UTF8.self), radix: 16)!)
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
