/// Percent-encodes a string as one URL path segment: only RFC 3986 unreserved
/// characters stay as they are; `.` and `..` are encoded whole so that no server reads
/// them as dot-segments.
public func encodePathSegment(_ s: String) -> String {
    if s == "." { return "%2E" }
    if s == ".." { return "%2E%2E" }
    let hex = Array("0123456789ABCDEF".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(s.utf8.count)
    for b in s.utf8 {
        switch b {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."),
            UInt8(ascii: "_"), UInt8(ascii: "~"):
            out.append(b)
        default:
            out.append(UInt8(ascii: "%"))
            out.append(hex[Int(b >> 4)])
            out.append(hex[Int(b & 0xF)])
        }
    }
    return String(decoding: out, as: UTF8.self)
}
