import Events

extension Folder {
    /// Merges `other`, the folded state of another identity, into `s`, so that `s` becomes
    /// the fold of the union of both identities' events (docs/identity.md, "Merge of
    /// folded state"): extremes by minimum and maximum, visits sessionized over the union
    /// of the kept spans, counts added, "latest" registers by stamp, the bounded lists
    /// merged and cut where the fold cuts them, and the applied positions the furthest
    /// per source partition (each partition is read in order by one owner, so what
    /// either state applied of it, the merge has applied).
    ///
    /// Exact when neither state forgot visits (each holds at most ``UserState/maxSpans``):
    /// spans of one side older than the other side's oldest kept span, when that side
    /// forgot some, are counted as visits of their own. Equal stamps of different values
    /// keep `s`'s. Returns whether `s` changed.
    @discardableResult
    public func merge(_ other: UserState, into s: inout UserState) -> Bool {
        let before = s
        mergeVisits(other, into: &s)
        if other.firstVisitMs < s.firstVisitMs { s.firstVisitMs = other.firstVisitMs }
        if other.lastSeenMs > s.lastSeenMs { s.lastSeenMs = other.lastSeenMs }
        if other.sawUserId { s.sawUserId = true }
        if let d = other.leadDate, d < (s.leadDate ?? .max) { s.leadDate = d }
        if let d = other.signUpDate, d < (s.signUpDate ?? .max) { s.signUpDate = d }
        s.activeDays = Self.mergedDays(s, other)
        s.activeDayAnchor = max(s.activeDayAnchor, other.activeDayAnchor)

        for f in TextFields.Field.allCases {
            if let theirs = other.text.get(f), Self.isNewer(theirs.stamp, than: s.text.get(f)?.stamp) {
                s.text.set(f, theirs)
            }
        }
        if let r = other.explicitUserType { _ = Latest.write(&s.explicitUserType, r.value, at: r.stamp) }
        if let r = other.pqlTrait { _ = Latest.write(&s.pqlTrait, r.value, at: r.stamp) }
        if !other.custom.isEmpty { mergeCustom(other.custom, into: &s) }
        for item in other.subscriptions.items.reversed() {
            _ = s.subscriptions.insert(item.value, at: item.stamp, limit: UserState.subscriptionLimit)
        }
        for item in other.products.items.reversed() {
            _ = s.products.insert(item.value, at: item.stamp, limit: UserState.productLimit)
        }
        if !other.keyEventCounts.isEmpty {
            for c in other.keyEventCounts {
                if let k = s.keyEventCounts.firstIndex(where: { $0.index == c.index }) {
                    let sum = s.keyEventCounts[k].count.addingReportingOverflow(c.count)
                    s.keyEventCounts[k].count = sum.overflow ? .max : sum.partialValue
                } else {
                    s.keyEventCounts.append(c)
                }
            }
        }
        s.appliedPositions = Self.mergedPositions(s.appliedPositions, other.appliedPositions)
        return s != before
    }

    /// Whether a register stamped `theirs` replaces one stamped `mine` (none: it does).
    private static func isNewer(_ theirs: Stamp, than mine: Stamp?) -> Bool {
        guard let mine else { return true }
        return mine < theirs
    }

    /// The union of both sides' kept spans, joined where two are within the visit gap; the
    /// visit count is both counts less one per join.
    private func mergeVisits(_ other: UserState, into s: inout UserState) {
        guard other.hasSpans || other.visits > 0 else { return }
        let gap = config.visitGapMs
        let all = (s.spans + other.spans).sorted { $0.start != $1.start ? $0.start < $1.start : $0.end < $1.end }
        var joined: [VisitSpan] = []
        joined.reserveCapacity(all.count)
        for span in all {
            if let last = joined.last, span.start.subtracting(saturating: last.end) <= gap {
                joined[joined.count - 1].end = max(last.end, span.end)
            } else {
                joined.append(span)
            }
        }
        let joins = UInt32(truncatingIfNeeded: all.count - joined.count)
        let total = s.visits.addingReportingOverflow(other.visits)
        let visits = total.overflow ? UInt32.max : total.partialValue
        // Never fewer than the spans kept (a crafted state may count fewer visits than it
        // has spans).
        s.visits = max(visits > joins ? visits - joins : 0, UInt32(truncatingIfNeeded: min(joined.count, UserState.maxSpans)))
        s.spans = joined
    }

    /// Both 64-day activity bitsets on the later anchor.
    private static func mergedDays(_ a: UserState, _ b: UserState) -> UInt64 {
        if b.activeDayAnchor == .min { return a.activeDays }
        if a.activeDayAnchor == .min { return b.activeDays }
        func shifted(_ s: UserState, to anchor: Int32) -> UInt64 {
            let k = Int64(anchor) - Int64(s.activeDayAnchor)
            return k >= 64 ? 0 : s.activeDays << UInt64(k)
        }
        let anchor = max(a.activeDayAnchor, b.activeDayAnchor)
        return shifted(a, to: anchor) | shifted(b, to: anchor)
    }

    /// Custom attributes by name, the later stamp winning; names new to `s` are added up
    /// to the fold's bound.
    private func mergeCustom(_ theirs: [Latest<CustomTrait>], into s: inout UserState) {
        let bound = max(config.customAttributes.count, 1) * 2
        for t in theirs {
            if let i = s.custom.firstIndex(where: { $0.value.name == t.value.name }) {
                if s.custom[i].stamp < t.stamp { s.custom[i] = t }
            } else if s.custom.count < bound {
                s.custom.append(t)
            }
        }
    }

    /// Per source partition, the furthest of the two positions (offset, then call); `a`'s
    /// order first, then sources only `b` has.
    static func mergedPositions(_ a: [AppliedPosition], _ b: [AppliedPosition]) -> [AppliedPosition] {
        guard !b.isEmpty else { return a }
        var out = a
        for p in b {
            if let i = out.firstIndex(where: { $0.source == p.source }) {
                let q = out[i]
                if p.offset > q.offset || (p.offset == q.offset && p.call > q.call) { out[i] = p }
            } else {
                out.append(p)
            }
        }
        return out
    }
}
