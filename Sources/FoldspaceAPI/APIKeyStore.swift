import Foundation

/// The API key, replaceable at run time (SIGHUP re-reads its file).
public final class APIKeyStore: @unchecked Sendable {
    private let lock = NSLock()
    private var key: String
    public let file: String?

    /// - Throws: when the key is empty or holds characters a header cannot carry.
    public init(key: String, file: String? = nil) throws {
        self.key = try Self.validated(key)
        self.file = file
    }

    public init(file: String) throws {
        self.file = file
        self.key = try Self.validated(Self.read(file))
    }

    public var current: String { lock.withLock { key } }

    /// Re-reads the key file, if there is one. Returns whether the key changed.
    @discardableResult
    public func reload() throws -> Bool {
        guard let file else { return false }
        let k = try Self.validated(Self.read(file))
        return lock.withLock {
            defer { key = k }
            return key != k
        }
    }

    static func read(_ file: String) throws -> String {
        do {
            return try String(contentsOfFile: file, encoding: .utf8)
        } catch {
            throw ConfigurationError("cannot read API key file \(file)")
        }
    }

    /// Trims surrounding whitespace; refuses anything a header value cannot hold, so a
    /// key file can never inject a header.
    static func validated(_ raw: String) throws -> String {
        let k = raw.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !k.isEmpty else { throw ConfigurationError("the API key is empty") }
        guard k.unicodeScalars.allSatisfy({ $0.value >= 0x21 && $0.value <= 0x7E }) else {
            throw ConfigurationError("the API key holds characters a header cannot carry")
        }
        return k
    }
}
