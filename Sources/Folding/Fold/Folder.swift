import Events

/// Folds decoded events into ``UserState``: the fold rules of the mapping, and nothing
/// else. Pure: the event time and the source position come in with the event.
public struct Folder: Sendable {
    public let config: FoldConfig
    private let keyEventIndex: [String: UInt8]

    public init(config: FoldConfig = FoldConfig()) {
        self.config = config
        var m: [String: UInt8] = [:]
        for (i, e) in config.keyEvents.prefix(FoldConfig.maxKeyEvents).enumerated() where m[e.name] == nil {
            m[e.name] = UInt8(i)
        }
        keyEventIndex = m
    }

    /// Applies one event at `timeMs` (already resolved: payload time, else Kafka time)
    /// from position `offset` of `source`, call `call` of that message (a batch
    /// envelope's calls share its offset), whose Kafka time was `kafkaMs` (-1: unknown).
    /// Returns whether anything the projection reads changed. A call at or before the
    /// state's applied position of the same source (offset, then call) is a replay and
    /// changes nothing.
    @discardableResult
    public func fold(
        _ e: SegmentEvent, timeMs: Int64, offset: Int64, source: UInt32 = 0, call: UInt32 = 0, kafkaMs: Int64 = -1,
        into s: inout UserState
    ) -> Bool {
        var ignored = Adjustments()
        return fold(e, timeMs: timeMs, offset: offset, source: source, call: call, kafkaMs: kafkaMs, into: &s, adjustments: &ignored)
    }

    /// As ``fold(_:timeMs:offset:source:call:kafkaMs:into:)``, counting what was dropped because
    /// Foldspace could never take it (product codes over 16 characters, environments
    /// outside 1…4), so that such values do not crowd out valid ones.
    @discardableResult
    public func fold(
        _ e: SegmentEvent, timeMs: Int64, offset: Int64, source: UInt32 = 0, call: UInt32 = 0, kafkaMs: Int64 = -1,
        into s: inout UserState, adjustments: inout Adjustments
    ) -> Bool {
        var e = e
        return fold(
            spending: &e, timeMs: timeMs, offset: offset, source: source, call: call, kafkaMs: kafkaMs, into: &s,
            adjustments: &adjustments)
    }

    /// As ``fold(_:timeMs:offset:source:call:kafkaMs:into:adjustments:)``, reading the event where it
    /// lies and moving its strings into the state: `e` is spent afterwards. For the
    /// engine, which drops each event after its fold: passing the event by value copied
    /// its 568 bytes and retained every string in it, per event.
    ///
    /// `positioned: false` folds without asking or moving the state's applied positions:
    /// for a call handed over in the process (identity resolution, docs/identity.md), whose
    /// replays the engine skips by the first hop's position instead. A user keyed by
    /// messageId has calls from every source partition, more than a state keeps positions
    /// of, and a position of one source carried into another user by a merge would make
    /// that user skip the source's own later calls below it.
    @discardableResult
    public func fold(
        spending e: inout SegmentEvent, timeMs: Int64, offset: Int64, source: UInt32 = 0, call: UInt32 = 0,
        kafkaMs: Int64 = -1, tieBreak: Int64? = nil, positioned: Bool = true, into s: inout UserState,
        adjustments: inout Adjustments
    ) -> Bool {
        if positioned {
            if s.hasApplied(source: source, offset: offset, call: call) { return false }
            s.recordApplied(AppliedPosition(source: source, offset: offset, call: call, kafkaMs: kafkaMs))
        }
        // Ties of one event time go by offset, or by what the caller gives (``Stamp/position(offset:call:)``).
        let stamp = Stamp(timeMs: timeMs, offset: tieBreak ?? offset)
        var text = TextFields.Writes()
        var changed = foldVisit(timeMs, into: &s)
        if timeMs < s.firstVisitMs {
            s.firstVisitMs = timeMs
            changed = true
        }
        if timeMs > s.lastSeenMs {
            s.lastSeenMs = timeMs
            changed = true
        }
        if e.hasUserId && !s.sawUserId {
            s.sawUserId = true
            changed = true
        }
        changed = foldActiveDay(timeMs, into: &s) || changed

        if case .some = e.traits {
            // Read where they lie: taking them out (`take()`, or an inout force-unwrap)
            // made the compiler copy all 344 bytes of them up to four times an event.
            // A single-payload enum keeps its payload at offset 0 (Swift's ABI).
            var hasTimezone = false
            if case .some = e.timezone { hasTimezone = true }
            changed =
                withUnsafeMutablePointer(to: &e.traits) { p in
                    foldTraits(
                        UnsafeMutableRawPointer(p).assumingMemoryBound(to: Traits.self), contextTimezone: hasTimezone,
                        at: stamp, into: &s, &text, &adjustments)
                } || changed
        }
        if let v = e.timezone.take() { text.add(.timezone, v) }
        // Taken out, not tested with `!= nil` and written through `!`: the comparison
        // copied and destroyed the whole optional location through generic witnesses.
        if var l = e.location.take() { foldLocation(&l, into: &text) }
        if let v = e.groupId.take() { changed = foldSubscription(v, at: stamp, into: &s, &text) || changed }
        if let v = e.contextGroupId.take() { changed = foldSubscription(v, at: stamp, into: &s, &text) || changed }
        if text.capped != 0 {
            for f in TextFields.Field.allCases where text.capped & (1 << UInt16(f.rawValue)) != 0 {
                adjustments.record(f.bodyName, .capped)
            }
        }
        changed = s.text.apply(text, at: stamp) || changed
        if let p = e.product {
            if p.product.unicodeScalars.count > FoldspaceLimits.productCode
                || p.environment.map({ !FoldspaceLimits.environments.contains($0) }) == true
            {
                adjustments.record("products", .omitted)
            } else {
                changed =
                    s.products.insert(
                        ProductKey(product: p.product, environment: p.environment), at: stamp,
                        limit: UserState.productLimit) || changed
            }
        }
        // (Most configurations name no key events: then no event name is hashed.)
        if !keyEventIndex.isEmpty, let name = e.eventName, let i = keyEventIndex[name] {
            if let k = s.keyEventCounts.firstIndex(where: { $0.index == i }) {
                if s.keyEventCounts[k].count < UInt32.max { s.keyEventCounts[k].count += 1 }
            } else {
                s.keyEventCounts.append(KeyEventCount(index: i, count: 1))
            }
            changed = true
        }
        return changed
    }

    /// The user's traits of one event (at `t`, where they lie), moved into `text` and
    /// the state.
    private func foldTraits(
        _ t: UnsafeMutablePointer<Traits>, contextTimezone: Bool, at stamp: Stamp, into s: inout UserState,
        _ text: inout TextFields.Writes, _ adjustments: inout Adjustments
    ) -> Bool {
        var changed = false
        if let v = t.pointee.userType, let ut = UserType(trait: v) {
            changed = Latest.write(&s.explicitUserType, ut, at: stamp) || changed
        }
        if let v = t.pointee.email.take() { text.add(.email, v) }
        if let v = t.pointee.name.take() ?? Self.joinedName(t.pointee.firstName, t.pointee.lastName) {
            // Fitted when folded, not only when projected: a cut of the raw value could
            // drop what fitting keeps (300 emoji, then "John Smith", is "John Smith").
            text.add(.name, Self.fitName(v, &adjustments))
        }
        if let v = t.pointee.role.take() ?? t.pointee.title { text.add(.role, v) }
        if let v = t.pointee.phone.take() { text.add(.phone, v) }
        if let v = t.pointee.avatar.take() ?? t.pointee.image { text.add(.image, v) }
        if let v = t.pointee.leadDate, v < (s.leadDate ?? .max) {
            s.leadDate = v
            changed = true
        }
        if let v = t.pointee.signUpDate ?? t.pointee.createdAt, v < (s.signUpDate ?? .max) {
            s.signUpDate = v
            changed = true
        }
        // The event's own `context.timezone` wins over the trait.
        if !contextTimezone, let v = t.pointee.timezone.take() { text.add(.timezone, v) }
        if var a = t.pointee.address.take() { foldLocation(&a, into: &text) }
        if let v = t.pointee.subscriptionId.take() { changed = foldSubscription(v, at: stamp, into: &s, &text) || changed }
        if let v = t.pointee.pqlScore, v.isFinite, v >= 0, v <= 100 {
            changed = Latest.write(&s.pqlTrait, v, at: stamp) || changed
        }
        for c in t.pointee.custom {
            // A value is JSON and cannot be cut: one over the bound is not kept.
            guard c.json.utf8.count <= Self.customValueLimitBytes else {
                adjustments.record("customAttributes", .capped)
                continue
            }
            changed = foldCustom(c, at: stamp, into: &s) || changed
        }
        return changed
    }

    private func foldSubscription(
        _ id: String, at stamp: Stamp, into s: inout UserState,
        _ text: inout TextFields.Writes
    ) -> Bool {
        text.add(.lastSubscription, id)
        // Cut like the text fields: an id over Foldspace's limit is never sent, and stays
        // over it when cut.
        let stored = TextFields.prefix(id, bytes: TextFields.Field.lastSubscription.storedLimitBytes)
        return s.subscriptions.insert(stored, at: stamp, limit: UserState.subscriptionLimit)
    }

    private func foldCustom(_ c: CustomTrait, at stamp: Stamp, into s: inout UserState) -> Bool {
        if let i = s.custom.firstIndex(where: { $0.value.name == c.name }) {
            var reg: Latest<CustomTrait>? = s.custom[i]
            let changed = Latest.write(&reg, c, at: stamp)
            s.custom[i] = reg!
            return changed
        }
        guard s.custom.count < max(config.customAttributes.count, 1) * 2 else { return false }
        s.custom.append(Latest(value: c, stamp: stamp))
        return true
    }

    private func foldLocation(_ l: inout Location, into text: inout TextFields.Writes) {
        if let v = l.country.take() { text.add(.country, v) }
        if let v = l.region.take() { text.add(.region, v) }
        if let v = l.city.take() { text.add(.city, v) }
        if let v = l.postalCode.take() { text.add(.postalCode, v) }
        if let v = l.countryCode.take() { text.add(.countryCode, v) }
    }

    /// Sessionizes by event time: a visit is a run of events with no gap over
    /// `visitGapMs`. The most recent spans are kept so that late events land in the
    /// right visit (joining, extending, or merging two visits); an event older than every
    /// span kept is assumed to belong to an already counted visit.
    private func foldVisit(_ t: Int64, into s: inout UserState) -> Bool {
        let gap = config.visitGapMs
        if !s.hasSpans {
            guard s.visits == 0 else { return false }
            s.startSpan(at: t)
            s.visits = 1
            return true
        }
        // The common cases touch only the most recent span: an event inside or just
        // after it, or one starting a new visit after it.
        let last = s.lastSpan
        if t > last.end.adding(saturating: gap) {
            s.startSpan(at: t)
            s.visits.increment()
            return true
        }
        if t >= last.start {
            s.extendLastSpan(to: t)
            return false
        }
        // A late event: the general rules over every span kept.
        var spans = s.spans
        var visits = s.visits
        let changed = foldLateVisit(t, gap: gap, spans: &spans, visits: &visits)
        s.spans = spans
        s.visits = visits
        return changed
    }

    /// Spans are sorted by start, oldest first.
    private func foldLateVisit(_ t: Int64, gap: Int64, spans: inout [VisitSpan], visits: inout UInt32) -> Bool {
        guard let i = spans.firstIndex(where: { t <= $0.end.adding(saturating: gap) }) else {
            spans.append(VisitSpan(start: t, end: t))
            visits.increment()
            return true  // the state keeps the newest maxSpans
        }
        if t >= spans[i].start.subtracting(saturating: gap) {
            // Joins span i, maybe bridging to its neighbours.
            let visitsBefore = visits
            var sp = spans[i]
            sp.start = min(sp.start, t)
            sp.end = max(sp.end, t)
            spans[i] = sp
            var j = i
            if j > 0 && spans[j].start.subtracting(saturating: spans[j - 1].end) <= gap {
                spans[j - 1].end = max(spans[j - 1].end, spans[j].end)
                spans.remove(at: j)
                visits.decrement()
                j -= 1
            }
            if j + 1 < spans.count && spans[j + 1].start.subtracting(saturating: spans[j].end) <= gap {
                spans[j].end = max(spans[j].end, spans[j + 1].end)
                spans.remove(at: j + 1)
                visits.decrement()
            }
            return visits != visitsBefore
        }
        // Falls in a gap before span i: a visit of its own, unless older than what is kept.
        if i == 0 && visits > UInt32(spans.count) { return false }
        spans.insert(VisitSpan(start: t, end: t), at: i)
        visits.increment()
        return true
    }

    /// Marks the UTC day of `t` in the 64-day activity bitset.
    private func foldActiveDay(_ t: Int64, into s: inout UserState) -> Bool {
        let day = Int32(clamping: t >= 0 ? t / 86_400_000 : t.subtracting(saturating: 86_399_999) / 86_400_000)
        if s.activeDayAnchor == .min {
            s.activeDayAnchor = day
            s.activeDays = 1
            return true
        }
        if day > s.activeDayAnchor {
            let shift = Int64(day) - Int64(s.activeDayAnchor)
            s.activeDays = shift >= 64 ? 0 : s.activeDays << UInt64(shift)
            s.activeDays |= 1
            s.activeDayAnchor = day
            return true
        }
        let k = Int64(s.activeDayAnchor) - Int64(day)
        guard k < 64 else { return false }
        let bit: UInt64 = 1 << UInt64(k)
        if s.activeDays & bit != 0 { return false }
        s.activeDays |= bit
        return true
    }

    /// The largest custom attribute value (compact JSON) a user keeps: Foldspace documents
    /// no limit, and an unbounded one would make every record and body unbounded.
    public static let customValueLimitBytes = 4096

    /// A name as Foldspace takes it (``NameFitter``, then at most its limit), with the
    /// adjustments counted; the projection of a fitted name changes nothing more.
    static func fitName(_ raw: String, _ adjustments: inout Adjustments) -> String {
        var fitted = NameFitter.fit(raw)
        if fitted != raw { adjustments.record("name", .transliterated) }
        if fitted.unicodeScalars.count > FoldspaceLimits.name {
            fitted = String(String.UnicodeScalarView(fitted.unicodeScalars.prefix(FoldspaceLimits.name)))
            while fitted.hasSuffix(" ") { fitted.removeLast() }
            adjustments.record("name", .truncated)
        }
        return fitted
    }

    static func joinedName(_ first: String?, _ last: String?) -> String? {
        switch (first, last) {
        case (let f?, let l?): return f + " " + l
        case (let f?, nil): return f
        case (nil, let l?): return l
        default: return nil
        }
    }
}

// Time and count arithmetic on folded state never traps: event times are plausible by the
// time they reach the fold, but a state restored from a record written before that was
// enforced, or crafted, may hold any value (a Kafka time near `Int64.max` once made every
// restart trap on the same user). `Int64.adding(saturating:)` and
// `subtracting(saturating:)` are in Events.
extension UInt32 {
    /// Adds one, staying at `.max`.
    @inline(__always)
    mutating func increment() { if self < .max { self += 1 } }
    /// Takes one away, staying at 0.
    @inline(__always)
    mutating func decrement() { if self > 0 { self -= 1 } }
}
