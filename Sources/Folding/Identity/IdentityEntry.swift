import Events

/// The link of an identity to the user it was joined to (see docs/identity.md, "The graph
/// entry of an identity").
public struct IdentityLink: Sendable, Equatable {
    /// The identity it was linked to, on the canonical side: the user it joined, which
    /// may itself have been linked on since (calls then take one hop more).
    public var identity: String
    /// The event time of the call that made the link (ms since the epoch).
    public var timeMs: Int64

    public init(identity: String, timeMs: Int64) {
        self.identity = identity
        self.timeMs = timeMs
    }

    /// Equal when the identities are the same bytes: see ``IdentityKey``.
    public static func == (a: IdentityLink, b: IdentityLink) -> Bool {
        a.timeMs == b.timeMs && IdentityKey.same(a.identity, b.identity)
    }
}

/// What the owner of an identity keeps of it in the identity graph: where it was linked
/// to, and which identities were linked into it. One record of `<group>-identities`.
public struct IdentityEntry: Sendable, Equatable {
    /// Set once: a later link of the same identity to another user is a conflict (a
    /// shared device), and the identity stays with the first. None: it is its own
    /// canonical identity.
    public var linkedTo: IdentityLink?
    /// The identities linked into this one, in the order they were noted, at most the
    /// graph's ``IdentityGraph/maxLinked``: how a call that carries one of them beside
    /// this identity is known not to need a link request.
    public var linked: [String]

    public init(linkedTo: IdentityLink? = nil, linked: [String] = []) {
        self.linkedTo = linkedTo
        self.linked = linked
    }

    /// Whether `id` is in ``linked`` (compared by its bytes).
    @inline(__always)
    public func hasLinked(_ id: String) -> Bool {
        for l in linked where IdentityKey.same(l, id) { return true }
        return false
    }

    /// Equal when the identities are the same bytes, in the same order: see ``IdentityKey``.
    public static func == (a: IdentityEntry, b: IdentityEntry) -> Bool {
        guard a.linkedTo == b.linkedTo, a.linked.count == b.linked.count else { return false }
        for (x, y) in zip(a.linked, b.linked) where !IdentityKey.same(x, y) { return false }
        return true
    }
}

/// An identity compared and hashed as its UTF-8 bytes, as the engine's user table and
/// the changelog tell identities apart: `String` equality is canonical equivalence, under
/// which "é" as one scalar and "e" with a combining accent would be one identity, while
/// they are two users everywhere else (the event decoder, the changelog, Foldspace).
struct IdentityKey: Hashable, Sendable {
    let string: String

    @inline(__always)
    init(_ string: String) { self.string = string }

    /// Whether `a` and `b` are the same bytes.
    @inline(__always)
    static func same(_ a: String, _ b: String) -> Bool {
        guard a.utf8.count == b.utf8.count else { return false }
        var x = a
        var y = b
        return x.withUTF8 { p in
            y.withUTF8 { q in
                guard let pa = p.baseAddress, let qa = q.baseAddress else { return true }  // both empty
                return ByteRuns.equal(pa, qa, count: p.count)
            }
        }
    }

    static func == (a: IdentityKey, b: IdentityKey) -> Bool { same(a.string, b.string) }

    func hash(into h: inout Hasher) {
        var s = string
        s.withUTF8 { h.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}
