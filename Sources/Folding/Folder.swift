import Events

/// Folds decoded events into ``UserState``: the fold rules of the mapping, and nothing
/// else. Pure: the event time and the source offset come in with the event.
public struct Folder: Sendable {
    public init() {}

    /// Applies one event at `timeMs` (already resolved: payload time, else Kafka time)
    /// and source position `offset`. Returns whether anything the projection reads
    /// changed.
    @discardableResult
    public func fold(_ e: SegmentEvent, timeMs: Int64, offset: Int64, into s: inout UserState) -> Bool {
        let stamp = Stamp(timeMs: timeMs, offset: offset)
        var changed = false
        if timeMs < s.firstVisitMs { s.firstVisitMs = timeMs; changed = true }
        if timeMs > s.lastSeenMs { s.lastSeenMs = timeMs; changed = true }
        if e.hasUserId && !s.sawUserId { s.sawUserId = true; changed = true }

        if let t = e.traits {
            if let v = t.userType, let ut = UserType(trait: v) {
                changed = Latest.write(&s.explicitUserType, ut, at: stamp) || changed
            }
            if let v = t.email { changed = Latest.write(&s.email, v, at: stamp) || changed }
            if let v = t.name ?? Self.joinedName(t.firstName, t.lastName) {
                changed = Latest.write(&s.name, v, at: stamp) || changed
            }
            if let v = t.role ?? t.title { changed = Latest.write(&s.role, v, at: stamp) || changed }
            if let v = t.phone { changed = Latest.write(&s.phone, v, at: stamp) || changed }
            if let v = t.avatar ?? t.image { changed = Latest.write(&s.image, v, at: stamp) || changed }
            if let v = t.leadDate, v < (s.leadDate ?? .max) { s.leadDate = v; changed = true }
            if let v = t.signUpDate ?? t.createdAt, v < (s.signUpDate ?? .max) { s.signUpDate = v; changed = true }
            if e.timezone == nil, let v = t.timezone { changed = Latest.write(&s.timezone, v, at: stamp) || changed }
            if let a = t.address { changed = foldLocation(a, at: stamp, into: &s) || changed }
        }
        if let v = e.timezone { changed = Latest.write(&s.timezone, v, at: stamp) || changed }
        if let l = e.location { changed = foldLocation(l, at: stamp, into: &s) || changed }
        return changed
    }

    private func foldLocation(_ l: Location, at stamp: Stamp, into s: inout UserState) -> Bool {
        var changed = false
        if let v = l.country { changed = Latest.write(&s.country, v, at: stamp) || changed }
        if let v = l.region { changed = Latest.write(&s.region, v, at: stamp) || changed }
        if let v = l.city { changed = Latest.write(&s.city, v, at: stamp) || changed }
        if let v = l.postalCode { changed = Latest.write(&s.postalCode, v, at: stamp) || changed }
        if let v = l.countryCode { changed = Latest.write(&s.countryCode, v, at: stamp) || changed }
        return changed
    }

    static func joinedName(_ first: String?, _ last: String?) -> String? {
        switch (first, last) {
        case let (f?, l?): return f + " " + l
        case let (f?, nil): return f
        case let (nil, l?): return l
        default: return nil
        }
    }
}
