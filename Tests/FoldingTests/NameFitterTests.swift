import Foundation
import Testing

@testable import Folding

@Suite struct NameFitterTests {
    @Test(arguments: [
        ("José", "Jose"), ("Zoë", "Zoe"), ("Bjørn Ødegård", "Bjorn Odegard"), ("Straße", "Strasse"),
        ("Łukasz Żółć", "Lukasz Zolc"), ("Nguyễn Văn A", "Nguyen Van A"), ("O'Brien", "OBrien"),
        ("Mary-Jane (MJ)", "Mary-Jane (MJ)"), ("  Dr.  J.  Smith  ", "Dr J Smith"), ("李小龙", ""), ("😀", ""),
        ("user_1", "user_1"), ("Renée\tDupont", "Renee Dupont"),
    ])
    func fits(raw: String, fitted: String) {
        let f = NameFitter.fit(raw)
        #expect(f == fitted)
        #expect(NameFitter.matchesPattern(f))
    }

    @Test func emptyNameIsOmittedAndCounted() {
        var s = UserState()
        s.name = Latest(value: "李小龙", stamp: Stamp(timeMs: 1, offset: 1))
        var adj = Adjustments()
        let b = Projector().body(identifyId: "u", state: s, adjustments: &adj)!
        let o = try! JSONSerialization.jsonObject(with: Data(b)) as! [String: Any]
        #expect(o["name"] == nil)
        #expect(adj.count("name", .omitted) == 1)
        #expect(adj.count("name", .transliterated) == 1)
    }
}
